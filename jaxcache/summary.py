"""Aggregates of a scan for ``jaxcache inspect``: by version, platform and function."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxcache.scanning import CacheEntry, CacheInfo, scan

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Group:
    """Entries and bytes of one group (a version, a platform, a module)."""

    entries: int
    bytes: int
    allocated_bytes: int

    def as_dict(self) -> dict[str, int]:
        return {"entries": self.entries, "bytes": self.bytes, "allocated_bytes": self.allocated_bytes}


@dataclass(frozen=True)
class Summary:
    """What ``inspect`` reports about a cache."""

    cache_dir: Path
    entries: int
    bytes: int
    allocated_bytes: int
    by_version: dict[str, Group]
    by_platform: dict[str, Group]
    by_module: dict[str, Group]
    installed_version: str | None
    other_version_bytes: int
    other_version_entries: int
    orphan_atimes: int
    without_atime: int
    other_files: int
    oldest_written: float | None
    newest_written: float | None
    executables: int = 0
    executables_bytes: int = 0
    root_entries: int = 0  # entries of unknown version directly in the root (a flat folder)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cache_dir": str(self.cache_dir),
            "entries": self.entries,
            "bytes": self.bytes,
            "allocated_bytes": self.allocated_bytes,
            "by_version": {k: g.as_dict() for k, g in self.by_version.items()},
            "by_platform": {k: g.as_dict() for k, g in self.by_platform.items()},
            "by_module": {k: g.as_dict() for k, g in self.by_module.items()},
            "installed_version": self.installed_version,
            "other_version_entries": self.other_version_entries,
            "other_version_bytes": self.other_version_bytes,
            "orphan_atimes": self.orphan_atimes,
            "without_atime": self.without_atime,
            "other_files": self.other_files,
            "oldest_written": self.oldest_written,
            "newest_written": self.newest_written,
            "executables": self.executables,
            "executables_bytes": self.executables_bytes,
            "root_entries": self.root_entries,
        }


def _rollup(cells: dict[tuple[str, str, str], list[int]], axis: int) -> dict[str, Group]:
    totals: dict[str, list[int]] = {}
    for cell, (count, size, allocated) in cells.items():
        t = totals.setdefault(cell[axis], [0, 0, 0])
        t[0] += count
        t[1] += size
        t[2] += allocated
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return {k: Group(*v) for k, v in ordered}


_SUMMARY_FILE = "summary.json"
_SUMMARY_FORMAT = 2  # bumped when Summary gains a field: an older record is recomputed


def inspect_cache(root: Path, *, installed_version: str | None) -> Summary:
    """What ``jaxcache inspect`` reports: a quick scan (sizes from the index, no
    last-use times) summarized.

    The summary of a cache none of whose folders changed since it was computed
    is reused: entries are created and deleted only by adding and removing files,
    which moves their folder's mtime, and the platform log only grows. (The same
    trust rule as the index: the snapshot must be taken well after the last change.)
    """
    root = Path(root)
    cached = _read_summary_cache(root)
    state = _folder_state(root, [n for n in cached.get("folders", {}) if n != "."])
    if state is not None and cached.get("format") == _SUMMARY_FORMAT and cached.get("folders") == state \
            and "summary" in cached:
        return _summary_from_dict(cached["summary"], installed_version)
    info = scan(root, quick=True, last_used=False)
    summary = summarize(info, installed_version=installed_version)
    fresh = _folder_state(root, [f.path.name for f in info.folders if f.path != root])
    if fresh is not None and _trusted(fresh):
        _write_summary_cache(root, {"format": _SUMMARY_FORMAT, "folders": fresh, "summary": summary.as_dict()})
    return summary


def _folder_state(root: Path, names: list[str]) -> dict[str, list[int]] | None:
    """mtime of the root and of each named version folder, the size of its write
    log, and the mtime of its executable store (0 without one).

    The root's unchanged mtime proves that the set of version folders is unchanged.
    """
    import os

    from jaxcache import exeformat, provenance

    state = {}
    try:
        for name in (".", *names):
            folder = root / name
            try:
                log_size = os.stat(folder / provenance.WRITES_LOG_NAME).st_size
            except FileNotFoundError:
                log_size = 0
            try:
                store_mtime = os.stat(folder / exeformat.FOLDER_NAME).st_mtime_ns
            except FileNotFoundError:
                store_mtime = 0
            state[name] = [os.stat(folder).st_mtime_ns, log_size, store_mtime]
    except OSError:
        return None
    return state


def _trusted(state: dict[str, list[int]]) -> bool:
    import time

    newest = max(max(folder[0], folder[2]) for folder in state.values())
    return time.time_ns() - newest > 2 * 10**9


def _cache_path(root: Path) -> Path:
    from jaxcache.index import META_DIR_NAME

    return root / META_DIR_NAME / _SUMMARY_FILE


def _read_summary_cache(root: Path) -> dict[str, Any]:
    import json

    try:
        path = _cache_path(root)
        if path.is_symlink():
            return {}
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_summary_cache(root: Path, data: dict[str, Any]) -> None:
    import json
    import os

    from jaxcache import atomic

    path = _cache_path(root)
    try:
        if not os.access(root, os.W_OK) or path.parent.is_symlink():
            return
        path.parent.mkdir(exist_ok=True)
        atomic.write_atomically(path, json.dumps(data).encode())
    except OSError:
        pass


def _summary_from_dict(data: dict[str, Any], installed_version: str | None) -> Summary:
    groups = {k: {name: Group(**g) for name, g in data[k].items()} for k in ("by_version", "by_platform", "by_module")}
    others = [g for v, g in groups["by_version"].items() if v not in (UNKNOWN, installed_version)]
    fields = {k: v for k, v in data.items() if k not in groups and k != "cache_dir"}
    fields.update(installed_version=installed_version, other_version_entries=sum(g.entries for g in others),
                  other_version_bytes=sum(g.bytes for g in others))
    return Summary(cache_dir=Path(data["cache_dir"]), **groups, **fields)


def summarize(info: CacheInfo, *, installed_version: str | None) -> Summary:
    """Totals of a scan, grouped by version, platform and module name."""
    # One pass into (version, platform, module) cells, then roll the few cells
    # up along each axis: a cache of 50k entries has a few hundred cells.
    cells: dict[tuple[str, str, str], list[int]] = {}
    without_atime = 0
    for e in info.entries:
        cell = cells.get((e.version or UNKNOWN, e.platform or UNKNOWN, e.module))
        if cell is None:
            cell = cells[(e.version or UNKNOWN, e.platform or UNKNOWN, e.module)] = [0, 0, 0]
        cell[0] += 1
        cell[1] += e.bytes
        cell[2] += e.allocated_bytes
        without_atime += not e.has_atime
    by_version = _rollup(cells, 0)
    others = [g for v, g in by_version.items() if v not in (UNKNOWN, installed_version)]
    written = [e.written for e in info.entries]
    return Summary(
        cache_dir=info.root,
        entries=len(info.entries),
        bytes=sum(g.bytes for g in by_version.values()),
        allocated_bytes=sum(g.allocated_bytes for g in by_version.values()),
        by_version=by_version,
        by_platform=_rollup(cells, 1),
        by_module=_rollup(cells, 2),
        installed_version=installed_version,
        other_version_entries=sum(g.entries for g in others),
        other_version_bytes=sum(g.bytes for g in others),
        orphan_atimes=len(info.orphan_atimes),
        without_atime=without_atime,
        other_files=info.other_files,
        oldest_written=min(written, default=None),
        newest_written=max(written, default=None),
        executables=len(info.executables),
        executables_bytes=sum(e.bytes for e in info.executables),
        root_entries=sum(1 for e in info.entries if e.folder == info.root and e.version is None),
    )


@dataclass(frozen=True)
class EntryDetails:
    """One entry as ``jaxcache ls`` shows it.

    Attributes:
        entry: the scanned entry.
        compile_seconds: whole seconds from the entry's header (JAX stores ``int(seconds)``),
            None if unreadable or zstd without zstandard.
        measured_compile_seconds: the precise time recorded when jaxcache saw the write.
    """

    entry: CacheEntry
    compile_seconds: int | None
    measured_compile_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.module, "key": e.key, "bytes": e.bytes, "allocated_bytes": e.allocated_bytes,
            "version": e.version, "platform": e.platform, "compile_seconds": self.compile_seconds,
            "measured_compile_seconds": self.measured_compile_seconds,
            "last_used": _iso(e.last_used), "last_use_recorded": e.last_used is not None,
            "last_use_estimate": _iso(e.recency), "written": _iso(e.written), "path": str(e.path),
        }


def _iso(timestamp: float | None) -> str | None:
    from datetime import datetime, timezone

    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def describe_entries(info: CacheInfo, *, name: str | None = None) -> list[EntryDetails]:
    """Every entry (matching the ``name`` glob, if given) with its compile times.

    Reads each entry's header (a few KB, with ``O_NOATIME``).
    """
    from jaxcache import jaxformat, provenance
    from jaxcache.prune import matches_name, validate_glob

    if name is not None:
        validate_glob(name)
    writes = {f.path: provenance.load_writes(f.path) for f in info.folders if f.version is not None}
    out = []
    for e in info.entries:
        if name is not None and not matches_name(e, name):
            continue
        try:
            seconds = jaxformat.read_compile_seconds(e.path)
        except (OSError, jaxformat.EntryFormatError):
            seconds = None
        record = writes.get(e.folder, {}).get(e.key)
        out.append(EntryDetails(e, seconds, record.compile_seconds if record else None))
    return out
