"""Why a run compiled: each persistent-cache miss against the closest entry of its name.

JAX's key is a SHA-256 over eight parts, in order (``jax/_src/cache_key.py``,
the same names from jax 0.6.1 to 0.12): the computation, the jaxlib version,
the backend (platform and its version), the XLA flags, the compile options,
the accelerator configuration (device topology and kinds), the compression
and a custom hook. At DEBUG JAX logs the hash of each part alone; jaxcache
records those hashes, with the cheap values behind them (:class:`Facts`), for
every key it sees written or missed (:mod:`jaxcache.keyparts`). A miss is then
explained against the entries of the same function: **new** when there is
none in any version folder, else **changed**, naming each part that differs
from the closest one (most parts equal) in words a user can act on.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jaxcache import jaxinternals, keyparts, provenance

# JAX's names for the parts of its key, in the order it hashes them (jaxinternals.KEY_PARTS).
PARTS = jaxinternals.KEY_PARTS


@dataclass(frozen=True)
class Facts:
    """The values behind a key's parts that jaxcache can read cheaply when it sees the key.

    Any may be None where the process could not tell.
    """

    jaxlib: str | None = None
    platform: str | None = None
    platform_version: str | None = None
    xla_flags: tuple[str, ...] | None = None  # the flags JAX included in the key
    device_kind: str | None = None
    device_count: int | None = None
    compression: str | None = None  # "zstandard" or "zlib", as JAX names it in the key
    x64: bool | None = None
    signature: str | None = None  # the traced arguments' shapes and dtypes, as JAX logs them

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Facts:
        known = {k: data.get(k) for k in cls.__dataclass_fields__}
        if known["xla_flags"] is not None:
            known["xla_flags"] = tuple(known["xla_flags"])
        return cls(**known)


@dataclass(frozen=True)
class KeyRecord:
    """One key JAX computed, what became of it, and its parts' hashes."""

    key: str
    event: Literal["miss", "write", "hit"]
    time: float
    parts: dict[str, str]  # part name (PARTS) -> hex SHA-256 of that part alone
    facts: Facts = field(default_factory=Facts)

    @property
    def module(self) -> str:
        return self.key[:-65]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "event": self.event, "time": self.time, "parts": self.parts,
                "facts": self.facts.as_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(key=str(data["key"]), event=data["event"], time=float(data["time"]), parts=dict(data["parts"]),
                   facts=Facts.from_dict(data.get("facts") or {}))


@dataclass(frozen=True)
class Entry:
    """An entry of the cache that a miss may be compared with."""

    key: str
    jaxlib: str | None  # the version folder it is in, when known
    record: KeyRecord | None  # what jaxcache recorded when it was written; None for entries written without it
    written: float = 0.0  # when (the file's mtime)


@dataclass(frozen=True)
class Difference:
    """One part of the key that differs from the closest entry, in words."""

    part: str  # one of PARTS
    what: str
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"part": self.part, "what": self.what, "hint": self.hint}


@dataclass(frozen=True)
class Explanation:
    """Why one miss compiled."""

    module: str
    key: str
    verdict: Literal["new", "changed", "unreadable", "unknown"]
    closest: str | None = None
    differences: tuple[Difference, ...] = ()
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"module": self.module, "key": self.key, "verdict": self.verdict, "closest": self.closest,
                "differences": [d.as_dict() for d in self.differences], "note": self.note}

    @property
    def summary(self) -> str:
        """One line: ``new``, or what changed."""
        if self.verdict == "new":
            return "new: no entry of this function in the cache"
        if self.verdict == "unreadable":
            return f"unreadable: {self.note}"
        if self.verdict == "unknown":
            return f"changed: {self.note}"
        return "changed: " + "; ".join(d.what for d in self.differences)


def explain(miss: KeyRecord, entries: Iterable[Entry], *, subject: str = "this run") -> Explanation:
    """Explains one miss against the cache's entries of the same function (any version folder).

    ``subject`` names what missed in the words (``"this entry"`` when comparing entries).
    """
    entries = list(entries)
    if any(e.key == miss.key for e in entries):
        # The very key is there: JAX found the entry and could not read it (cut short, damaged).
        return Explanation(miss.module, miss.key, "unreadable", closest=miss.key,
                           note="an entry with this very key is in the cache but JAX could not read it "
                                "(damaged or cut short): `jaxcache check --repair` removes it")
    same_name = [e for e in entries if e.key[:-65] == miss.module and e.key != miss.key]
    if not same_name:
        return Explanation(miss.module, miss.key, "new")
    recorded = [e for e in same_name if e.record is not None and e.record.parts]
    if not recorded:
        versions = sorted({e.jaxlib for e in same_name if e.jaxlib})
        other = [v for v in versions if v != miss.facts.jaxlib]
        if miss.facts.jaxlib and other and miss.facts.jaxlib not in versions:
            diff = _jaxlib_difference(other[-1], miss.facts.jaxlib)
            return Explanation(miss.module, miss.key, "changed", closest=same_name[0].key, differences=(diff,),
                               note="the entries were written without jaxcache: only their jaxlib is known")
        return Explanation(miss.module, miss.key, "unknown", closest=same_name[0].key,
                           note=f"{len(same_name)} entries of this function were written without jaxcache in the "
                                "loop, so what sets them apart is unknown")
    # Most parts equal; among those, the same arguments (a changed body, not a new shape); then the newest.
    closest = max(recorded, key=lambda e: (_equal_parts(miss, e.record),  # type: ignore[arg-type]
                                           e.record.facts.signature == miss.facts.signature,  # type: ignore[union-attr]
                                           e.record.time))  # type: ignore[union-attr]
    assert closest.record is not None
    differing = [part for part in PARTS if _differs(part, miss, closest.record)]
    differences = tuple(_describe(part, miss.facts, closest.record.facts, follows=_follows(part, differing),
                                  subject=subject) for part in differing)
    if not differences:
        return Explanation(miss.module, miss.key, "unknown", closest=closest.key,
                           note="every recorded part matches the closest entry (a part JAX did not log differs)")
    return Explanation(miss.module, miss.key, "changed", closest=closest.key, differences=differences)


def _equal_parts(a: KeyRecord, b: KeyRecord) -> int:
    return sum(1 for part in PARTS if part in a.parts and a.parts.get(part) == b.parts.get(part))


def _differs(part: str, a: KeyRecord, b: KeyRecord) -> bool:
    return part in a.parts and part in b.parts and a.parts[part] != b.parts[part]


def _follows(part: str, differing: list[str]) -> str | None:
    """The other part whose change explains this one's: XLA flags and devices feed the compile options."""
    if part != "compile_options":
        return None
    for cause in ("XLA flags", "accelerator_config"):
        if cause in differing:
            return cause
    return None


def _describe(part: str, now: Facts, then: Facts, *, follows: str | None = None,
              subject: str = "this run") -> Difference:
    if part == "jax_lib version":
        return _jaxlib_difference(then.jaxlib, now.jaxlib)
    if part == "XLA flags":
        return _flags_difference(then.xla_flags, now.xla_flags)
    if part == "backend version":
        what = (f"the platform: {then.platform} -> {now.platform}" if then.platform != now.platform
                else f"the {now.platform} backend's version: {then.platform_version} -> {now.platform_version}")
        return Difference(part, what, "a different backend or driver: warm on the machine that runs")
    if part == "accelerator_config":
        return Difference(part, _devices(then, now, subject), "warm with the device count and kind of the run "
                                                              "(`jaxcache warm --devices N`)")
    if part == "compile_options":
        if follows is not None:
            return Difference(part, f"the compile options with them (the {'XLA flags' if follows == 'XLA flags' else 'devices'} "
                                    "feed them)")
        what = "the compile options (shardings, donation, device assignment, or the settings that feed them)"
        if then.device_count != now.device_count and None not in (then.device_count, now.device_count):
            what += f"; the run has {now.device_count} devices, the entry was made with {then.device_count}"
        return Difference(part, what)
    if part == "computation":
        hint = None
        if then.x64 is not None and now.x64 is not None and then.x64 != now.x64:
            hint = "warm with x64 as the run has it (`jaxcache warm --x64`, or JAX_ENABLE_X64)"
        return Difference(part, _program(then, now), hint)
    if part == "compression":
        return Difference(part, f"the compression: {then.compression or '?'} -> {now.compression or '?'} "
                                "(zstandard installed or removed changes every key)",
                          "install or remove zstandard to match the environment that warmed")
    return Difference(part, f"JAX's custom key hook ({part})")


def _jaxlib_difference(then: str | None, now: str | None) -> Difference:
    return Difference("jax_lib version", f"the jaxlib version: {then or '?'} -> {now or '?'}",
                      "after an upgrade: `jaxcache prune --stale` removes the old entries, `jaxcache warm` "
                      "compiles the new ones")


def _flags_difference(then: Sequence[str] | None, now: Sequence[str] | None) -> Difference:
    if then is None or now is None:
        return Difference("XLA flags", "XLA_FLAGS / LIBTPU_INIT_ARGS")
    added = [f for f in now if f not in then]
    removed = [f for f in then if f not in now]
    words = [f"added {' '.join(added)}" if added else "", f"removed {' '.join(removed)}" if removed else ""]
    return Difference("XLA flags", "XLA_FLAGS / LIBTPU_INIT_ARGS: " + ", ".join(w for w in words if w),
                      "warm with the same XLA_FLAGS as the run")


def _devices(then: Facts, now: Facts, subject: str = "this run") -> str:
    def one(f: Facts) -> str:
        count = "?" if f.device_count is None else str(f.device_count)
        noun = "device" if f.device_count == 1 else "devices"
        return f"{count} {f.device_kind or f.platform or ''} {noun}".replace("  ", " ")

    return f"the devices: the entry was made with {one(then)}, {subject} had {one(now)}"


def _program(then: Facts, now: Facts) -> str:
    if then.x64 is not None and now.x64 is not None and then.x64 != now.x64:
        return (f"the program: x64 {'on' if now.x64 else 'off'}, so its dtypes "
                f"{'widen to 64 bits' if now.x64 else 'narrow to 32 bits'} (the entry was made with x64 "
                f"{'on' if then.x64 else 'off'})")
    if then.signature and now.signature and then.signature != now.signature:
        return f"the program's arguments: {then.signature} -> {now.signature}"
    if then.signature and now.signature:
        return "the program itself (same argument shapes and dtypes: the code or a static argument changed)"
    return "the program itself (the traced computation: code, shapes, dtypes or static arguments)"


def short_lines(explanations: Sequence[Explanation], *, limit: int = 10) -> list[str]:
    """One line per function and reason (``jit_iota (4): new: ...``), most frequent first, at most ``limit``."""
    groups: dict[tuple[str, str], int] = {}
    for e in explanations:
        groups[(e.module, e.summary)] = groups.get((e.module, e.summary), 0) + 1
    ordered = sorted(groups.items(), key=lambda kv: -kv[1])
    lines = [f"{module}{f' ({n})' if n > 1 else ''}: {summary}" for (module, summary), n in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"... and {len(ordered) - limit} more")
    return lines


# --- Reading what was recorded ----------------------------------------------------------
@dataclass(frozen=True)
class RunExplanation:
    """Every miss of one run, explained."""

    run: str
    argv: tuple[str, ...]
    started: float | None
    explanations: tuple[Explanation, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "argv": list(self.argv), "started": self.started,
                "misses": [e.as_dict() for e in self.explanations]}


def cache_entries(root: Path) -> list[Entry]:
    """Every entry of the cache (root and version folders), with its recorded key parts if any."""
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and provenance.read_marker(p) is not None) \
        if root.is_dir() else []
    entries = []
    for folder in folders:
        marker = provenance.read_marker(folder)
        recorded = keyparts.load_keys(folder)
        try:
            found = [(d.name[:-6], d.stat(follow_symlinks=False).st_mtime) for d in os.scandir(folder)
                     if d.name.endswith("-cache") and len(d.name) > 71]
        except OSError:
            continue
        for key, written in found:
            data = recorded.get(key)
            entries.append(Entry(key=key, jaxlib=marker.jaxlib if marker else None,
                                 record=KeyRecord.from_dict(data) if data else None, written=written))
    return entries


def explain_run(root: Path, run: str | int = "last") -> RunExplanation:
    """Explains the misses of one recorded run: ``"last"``, a run id, or N (1: the last, 2: the one before...).

    Raises:
        UsageError: no such run, or none recorded in this cache.
    """
    from jaxcache.errors import UsageError

    root = keyparts.cache_root(root)  # given a version folder, its runs are its root's
    runs = keyparts.list_runs(root)
    if not runs:
        raise UsageError(f"no runs recorded in {root}: runs are recorded by jaxcache.configure(), `jaxcache run` "
                         "and `pytest --jaxcache`")
    if run == "last":
        path = runs[-1]
    elif isinstance(run, int) or str(run).isdigit():
        n = int(run)
        if not 1 <= n <= len(runs):
            raise UsageError(f"--run {n}: {len(runs)} run{'s are' if len(runs) != 1 else ' is'} recorded here "
                             "(1 is the last)")
        path = runs[-n]
    else:
        matches = [p for p in runs if p.stem == str(run)]
        if not matches:
            raise UsageError(f"--run {run}: no such run (see `jaxcache explain --list`)")
        path = matches[0]
    headers, misses = keyparts.load_run(path)
    started = min((h["start"] for h in headers if isinstance(h.get("start"), (int, float))), default=None)
    # What the run found, not what it wrote itself: a function compiled at two shapes in one run
    # was new, not "changed" against its own first entry.
    entries = [e for e in cache_entries(root) if started is None or e.written < started]
    explained = tuple(explain(KeyRecord.from_dict(m), entries) for m in _first_per_key(misses))
    first = headers[0] if headers else {}
    return RunExplanation(run=path.stem, argv=tuple(first.get("argv") or ()), started=first.get("start"),
                          explanations=explained)


def _first_per_key(misses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for m in misses:
        if m.get("key") not in seen and isinstance(m.get("parts"), dict):
            seen.add(m["key"])
            out.append(m)
    return out


def explain_entries(root: Path, pattern: str) -> list[Explanation]:
    """For the entries of each function matching ``pattern``: what sets each apart from the newest."""
    entries = [e for e in cache_entries(keyparts.cache_root(root)) if fnmatch.fnmatchcase(e.key[:-65], pattern)]
    out = []
    by_module: dict[str, list[Entry]] = {}
    for e in entries:
        by_module.setdefault(e.key[:-65], []).append(e)
    for module, group in sorted(by_module.items()):
        recorded = sorted((e for e in group if e.record is not None), key=lambda e: e.record.time)  # type: ignore[union-attr]
        for e in group:
            if e.record is None:
                out.append(Explanation(module, e.key, "unknown", note=f"written without jaxcache in the loop"
                                       f"{' (jaxlib ' + e.jaxlib + ')' if e.jaxlib else ''}"))
                continue
            others = [o for o in recorded if o.key != e.key]
            if not others:
                out.append(Explanation(module, e.key, "new", note="the only recorded entry of this function"))
                continue
            out.append(explain(e.record, [others[-1]], subject="this entry"))
    return out
