"""Integrity findings for a cache folder, and repairs for the ones that are safe to fix."""

from __future__ import annotations

import os
import stat as statmod
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jaxcache import atomic, exeformat, jaxformat
from jaxcache.atimes import create_atime
from jaxcache.atomic import TEMP_PREFIX
from jaxcache.errors import JaxCacheError
from jaxcache.locking import BATCH_SIZE, folder_lock
from jaxcache.scanning import CacheEntry, CacheInfo
from jaxcache.security import share_folder, shared_info, unshared_folders, writable_by_others

Kind = Literal[
    "corrupt",  # truncated or garbage: JAX warns and recompiles every run, and never replaces it
    "missing-atime",  # -cache without -atime in a capped cache: every later JAX write fails
    "orphan-atime",  # -atime without its -cache
    "foreign-path",  # written for another folder path by a jaxlib that keys the path: a process pointed here misses it
    "writable",  # others can write to the folder: they can run code in every JAX process using it
    "symlink",  # an entry-named symlink: never followed, never deleted
    "unverifiable",  # zstd entry without the zstandard package here
    "stale-temp",  # a temporary file of an atomic write whose writer died
    "damaged-executable",  # a stored executable whose payload does not match its header: never loaded
    "unshared",  # a version folder of a team cache its group cannot write to: members' writes fail
    "unsettled",  # a broken entry written seconds ago: maybe still being written; not repaired yet
]
Severity = Literal["error", "warning", "info"]
_SEVERITY: dict[str, Severity] = {
    "corrupt": "error",
    "missing-atime": "error",
    "orphan-atime": "warning",
    "foreign-path": "info",  # a valid entry; only this folder's processes miss it
    "writable": "error",
    "symlink": "warning",
    "unverifiable": "info",
    "stale-temp": "warning",
    "damaged-executable": "warning",
    "unshared": "error",
    "unsettled": "warning",
}
# foreign-path is never repaired: a process pointed at the folder the entry names
# (through a symlink, a relative path, another mount) still hits it, so nothing
# proves it dead; `prune` by age removes it once nobody uses it.
_REPAIRABLE = frozenset({"corrupt", "missing-atime", "orphan-atime", "writable", "stale-temp",
                         "damaged-executable", "unshared"})
# An atomic write lives for milliseconds: a temporary file this old lost its writer, even
# where its name cannot prove it (another host on a shared folder, an older name).
STALE_TEMP_SECS = 300.0

# JAX writes an entry with a plain write_bytes: a file younger than this may be
# mid-write, so it is neither reported as truncated nor repaired.
IN_PROGRESS_SECS = 10.0


@dataclass(frozen=True)
class Finding:
    """One problem found by :func:`check`."""

    kind: Kind
    path: Path
    message: str
    key: str | None = None

    @property
    def severity(self) -> Severity:
        return _SEVERITY[self.kind]

    @property
    def repairable(self) -> bool:
        return self.kind in _REPAIRABLE

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "path": str(self.path), "key": self.key,
                "message": self.message}


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found."""

    root: Path
    entries_checked: int
    findings: tuple[Finding, ...]

    @property
    def problems(self) -> tuple[Finding, ...]:
        """Findings that need attention (not merely informational)."""
        return tuple(f for f in self.findings if f.severity != "info")

    @property
    def ok(self) -> bool:
        return not self.problems

    def remaining(self, result: RepairResult | None = None) -> tuple[Finding, ...]:
        """The problems left once ``result``'s repairs are made."""
        fixed = set() if result is None else {o.repair.finding for o in result.outcomes if o.status != "failed"}
        return tuple(f for f in self.problems if f not in fixed)

    def as_dict(self, result: RepairResult | None = None) -> dict[str, Any]:
        """The report, with each finding's repair outcome when ``result`` is given."""
        outcomes = {} if result is None else {o.repair.finding: o for o in result.outcomes}

        def finding(f: Finding) -> dict[str, Any]:
            outcome = outcomes.get(f)
            return {**f.as_dict(),
                    "repair": outcome.repair.action if outcome else None,
                    "repaired": outcome is not None and outcome.status != "failed",
                    "repair_error": outcome.detail if outcome and outcome.status == "failed" else None,
                    "repair_note": outcome.detail if outcome and outcome.status != "failed" else None}

        return {"cache_dir": str(self.root), "entries_checked": self.entries_checked,
                "ok": not self.remaining(result), "findings": [finding(f) for f in self.findings]}


RepairAction = Literal["delete", "quarantine", "create-atime", "remove-write-permission", "give-to-group"]


@dataclass(frozen=True)
class Repair:
    """One planned repair: what happens to the file or folder of a finding."""

    finding: Finding
    action: RepairAction

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, **self.finding.as_dict()}


@dataclass(frozen=True)
class RepairPlan:
    """What ``check --repair`` would do, before it does anything."""

    root: Path
    repairs: tuple[Repair, ...]

    def count(self, action: RepairAction) -> int:
        return sum(1 for r in self.repairs if r.action == action)

    def as_dict(self) -> dict[str, Any]:
        return {"cache_dir": str(self.root), "repairs": [r.as_dict() for r in self.repairs]}


@dataclass(frozen=True)
class RepairOutcome:
    """What became of one planned repair.

    ``status``: "repaired"; "skipped" (nothing to do any more: the file is gone, or
    was replaced by a whole one since the check); or "failed" (``detail`` says why).
    """

    repair: Repair
    status: Literal["repaired", "skipped", "failed"]
    detail: str | None = None


@dataclass(frozen=True)
class RepairResult:
    outcomes: tuple[RepairOutcome, ...]

    @property
    def repaired(self) -> tuple[Finding, ...]:
        return tuple(o.repair.finding for o in self.outcomes if o.status != "failed")

    @property
    def failed(self) -> tuple[tuple[Finding, str], ...]:
        return tuple((o.repair.finding, o.detail or "") for o in self.outcomes if o.status == "failed")

    def as_dict(self) -> dict[str, Any]:
        return {"outcomes": [{**o.repair.as_dict(), "status": o.status, "detail": o.detail} for o in self.outcomes]}


def check(
    info: CacheInfo,
    *,
    capped: bool = False,
    installed_version: str | None = None,
    now: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Checks every entry of a scanned cache.

    Args:
        info: the scan to check.
        capped: the cache is used with ``jax_compilation_cache_max_size`` set, so
            every entry needs its ``-atime``. Also assumed for a folder that
            has any ``-atime`` file.
        installed_version: the jaxlib in use; it decides, for entries whose writer
            is unknown, whether a folder's path is part of every key.
        now: the current time (for tests).
        progress: called with the number of entries checked so far, every 256 entries and at the end.
    """
    now = time.time() if now is None else now
    findings: list[Finding] = []
    shared = shared_info(info.root)
    for problem in writable_by_others(info.root, shared=shared):
        findings.append(Finding("writable", info.root, problem))
    for folder_path in unshared_folders(info.root):
        findings.append(Finding("unshared", folder_path, f"team cache of group {shared.group if shared else '?'}: "
                                "its members cannot write here (set up before `init --shared`?)"))
    for folder in info.folders:
        if folder.path != info.root:
            for problem in writable_by_others(folder.path, parents=False, shared=shared):
                findings.append(Finding("writable", folder.path, problem))
    # A folder JAX has used with a cap has -atime files. (Not the .lockfile:
    # jaxcache itself creates that one whenever it changes a folder.)
    needs_atime = {e.folder for e in info.entries if e.has_atime}
    if capped:
        needs_atime.update(f.path for f in info.folders)
    # From jaxlib 0.11.2 JAX's eviction takes an entry without -atime as the oldest.
    needs_atime = {folder.path for folder in info.folders if folder.path in needs_atime
                   and jaxformat.missing_atime_breaks_writes(folder.version or installed_version)}
    for done, entry in enumerate(info.entries, start=1):
        if progress is not None and done % 256 == 0:
            progress(done)
        young = now - entry.written < IN_PROGRESS_SECS
        findings.extend(_check_entry(entry, needs_atime=entry.folder in needs_atime and not young,
                                     path_in_key=jaxformat.path_in_key(entry.version or installed_version),
                                     young=young))
    if progress is not None:
        progress(len(info.entries))
    for path in info.orphan_atimes:
        findings.append(Finding("orphan-atime", path, "-atime file without its -cache entry", key=path.name[:-6]))
    for path in info.symlinks:
        findings.append(Finding("symlink", path, "entry-named symlink (never followed)"))
    for path in info.temp_files:
        try:
            age = now - path.lstat().st_mtime
        except OSError:
            continue
        if _orphaned(path, age):
            findings.append(Finding("stale-temp", path, "temporary file left by a writer that died"))
    for item in info.executables:
        try:
            whole = exeformat.file_is_whole(item.path, exeformat.read_header(item.path), verify_checksum=True)
        except (OSError, exeformat.ExecutableFormatError):
            continue  # gone meanwhile, or replaced by something the next scan classifies
        if not whole:
            findings.append(Finding("damaged-executable", item.path,
                                    "stored executable: the payload does not match its header (runs ignore it)"))
    return CheckReport(root=info.root, entries_checked=len(info.entries), findings=tuple(findings))


def _check_entry(entry: CacheEntry, *, needs_atime: bool, path_in_key: bool, young: bool) -> Iterable[Finding]:
    try:
        with jaxformat.open_entry(entry.path) as f:
            data = f.read()
    except FileNotFoundError:
        return  # evicted since the scan
    except OSError as e:
        yield Finding("corrupt", entry.path, f"unreadable: {e.strerror}", key=entry.key)
        return
    try:
        executable = jaxformat.decompress_entry(data)
    except jaxformat.EntryFormatError as e:
        kind: Kind = "unverifiable" if "zstandard" in str(e) else ("unsettled" if young else "corrupt")
        message = str(e)
        if kind == "unsettled":
            # Plain JAX writes in place: a broken file this young may still be being written.
            message += (f" (written {IN_PROGRESS_SECS:.0f} s ago or less: a write in progress, or one cut "
                        "short; check again in a few seconds before repairing it)")
        yield Finding(kind, entry.path, message, key=entry.key)
        return
    if needs_atime and not entry.has_atime:
        yield Finding(
            "missing-atime", entry.path, "no -atime file in a size-capped cache: JAX's next write will fail", key=entry.key
        )
    if path_in_key:
        written_for = _foreign_folder(executable, entry.folder)
        if written_for is not None:
            yield Finding("foreign-path", entry.path, f"written for the cache folder {written_for}, whose path this "
                          "jaxlib hashes into the key: only a process pointed at that path hits it", key=entry.key)


def _foreign_folder(executable: bytes, folder: Path) -> str | None:
    """The folder an entry was written for, when that is provably not ``folder`` under any name."""
    try:
        embedded = jaxformat.embedded_cache_dir(executable)
    except jaxformat.EmbeddedPathUnknown:
        return None  # cannot tell: say nothing rather than guess
    if embedded is None or not os.path.isabs(embedded):
        return None  # no path in the key, or one relative to a working folder unknown here
    if os.path.normpath(embedded) == os.path.normpath(folder):
        return None
    try:
        if os.path.samefile(embedded, folder):
            return None  # the same folder through a symlink or another mount
    except OSError:
        pass
    return embedded


def plan_repair(report: CheckReport) -> RepairPlan:
    """Decides how each repairable finding is fixed; changes nothing.

    A corrupt entry is deleted only when its contents prove it JAX's (empty, or
    starting as JAX's compressors write, the proof ``prune`` uses); otherwise it
    is moved aside to ``<name>.quarantined``. Missing ``-atime`` files are
    created from the entry's write time; orphan ``-atime`` files, temporary
    files of dead writers and damaged stored executables are deleted; group or
    world write permission is removed; an unshared version folder of a team
    cache is given back to its group.
    """
    repairs = []
    for finding in report.findings:
        if not finding.repairable:
            continue
        action: RepairAction
        if finding.kind == "corrupt":
            try:
                action = "delete" if _provably_jax_written(finding.path) else "quarantine"
            except OSError:
                continue  # gone since the check, or unreadable: nothing provable to do
        elif finding.kind == "missing-atime":
            action = "create-atime"
        elif finding.kind == "writable":
            action = "remove-write-permission"
        elif finding.kind == "unshared":
            action = "give-to-group"
        else:  # orphan-atime, stale-temp, damaged-executable
            action = "delete"
        repairs.append(Repair(finding, action))
    return RepairPlan(root=report.root, repairs=tuple(repairs))


def execute_repair(plan: RepairPlan) -> RepairResult:
    """Carries out a plan, folder by folder under each ``.lockfile``, proving each
    file again right before it changes: anything no longer as the check found it
    is skipped, and a file is deleted only if it is still provably what the plan says.
    """
    outcomes: list[RepairOutcome] = []
    by_folder: dict[Path, list[Repair]] = {}
    for item in plan.repairs:
        kind = item.finding.kind
        folder = item.finding.path if kind in ("writable", "unshared") else item.finding.path.parent
        by_folder.setdefault(folder, []).append(item)
    for folder, items in by_folder.items():
        for start in range(0, len(items), BATCH_SIZE):
            batch = items[start : start + BATCH_SIZE]
            try:
                with folder_lock(folder):
                    for item in batch:
                        try:
                            outcomes.append(_repair_one(item))
                        except OSError as e:
                            outcomes.append(RepairOutcome(item, "failed", e.strerror or str(e)))
            except JaxCacheError as e:  # a folder we cannot lock: report every item in it
                outcomes.extend(RepairOutcome(item, "failed", str(e)) for item in batch)
    return RepairResult(outcomes=tuple(outcomes))


def repair(report: CheckReport) -> RepairResult:
    """Plans and carries out every safe repair (:func:`plan_repair`, then :func:`execute_repair`)."""
    return execute_repair(plan_repair(report))


def _repair_one(item: Repair) -> RepairOutcome:
    finding, path = item.finding, item.finding.path
    if finding.kind == "writable":
        if not path.is_dir() or path.is_symlink():
            raise OSError(f"{path} is not a folder")
        mode = statmod.S_IMODE(path.stat().st_mode)
        shared = shared_info(path) or shared_info(path.parent)
        # A deliberate team cache keeps group write; only world write goes.
        path.chmod(mode & ~statmod.S_IWOTH if shared is not None else mode & ~(statmod.S_IWGRP | statmod.S_IWOTH))
        return RepairOutcome(item, "repaired")
    if finding.kind == "unshared":
        version_folder = finding.path.parent if finding.path.name == exeformat.FOLDER_NAME else finding.path
        share_folder(version_folder.parent, finding.path)
        return RepairOutcome(item, "repaired")
    if finding.kind == "damaged-executable":
        if path.parent.name != exeformat.FOLDER_NAME or path.is_symlink() or not exeformat.is_store_name(path.name):
            raise OSError(f"{path.name} is not a stored executable")
        try:
            header = exeformat.read_header(path)  # proven ours by its header before it goes
            if exeformat.file_is_whole(path, header, verify_checksum=True):
                return RepairOutcome(item, "skipped", "replaced by a whole one since the check")
        except FileNotFoundError:
            return RepairOutcome(item, "skipped", "gone since the check")
        except exeformat.ExecutableFormatError as e:
            raise OSError(str(e)) from None
        path.unlink(missing_ok=True)
        return RepairOutcome(item, "repaired")
    if finding.kind == "stale-temp":
        if not path.name.startswith(TEMP_PREFIX) or path.is_symlink():
            raise OSError(f"{path.name} is not a jaxcache temporary file")
        try:
            age = time.time() - path.lstat().st_mtime
        except FileNotFoundError:
            return RepairOutcome(item, "skipped", "gone since the check")
        if not _orphaned(path, age):
            return RepairOutcome(item, "skipped", "its writer is back at work")  # written to since the check
        path.unlink(missing_ok=True)
        return RepairOutcome(item, "repaired")
    parsed = jaxformat.parse_entry_name(path.name)
    if parsed is None or path.is_symlink():
        raise OSError(f"{path.name} is not a cache entry")
    if finding.kind == "corrupt":
        try:
            still_broken = _still_corrupt(path)
            provable = _provably_jax_written(path)
        except FileNotFoundError:
            return RepairOutcome(item, "skipped", "gone since the check")
        if not still_broken:
            return RepairOutcome(item, "skipped", "replaced by a whole entry since the check")
        note = None
        if item.action == "quarantine" or not provable:
            aside = _quarantine(path)
            note = f"moved aside to {aside.name} (its contents do not prove it a JAX entry)"
        else:
            # -cache first, then -atime: the reverse would leave a -cache without -atime.
            path.unlink(missing_ok=True)
        (path.parent / jaxformat.atime_file_name(parsed.key)).unlink(missing_ok=True)
        return RepairOutcome(item, "repaired", note)
    if finding.kind == "orphan-atime":
        if (path.parent / jaxformat.cache_file_name(parsed.key)).exists():
            return RepairOutcome(item, "skipped", "its entry is back")
        data = _read_small(path)
        if data and jaxformat.decode_atime(data) is None:  # empty: a write cut short
            raise OSError(f"{path.name} does not hold an access time")
        path.unlink(missing_ok=True)
        return RepairOutcome(item, "repaired")
    if finding.kind == "missing-atime":
        created = create_atime(path)
        return RepairOutcome(item, "repaired" if created else "skipped", None if created else "has one since the check")
    raise AssertionError(finding.kind)


def _orphaned(path: Path, age: float) -> bool:
    """A temporary file whose writer provably died.

    Its name records its writer: on this machine that settles it either way (a
    long pull of a large object is never cut short by its age). Otherwise (another
    host sharing the folder, a name from before writers were recorded) only an
    age far beyond any write says so.
    """
    writer = atomic.parse_temp_name(path.name)
    if writer is not None and writer.machine == atomic.machine_token():
        return atomic.writer_is_gone(path)
    return age > STALE_TEMP_SECS


def _still_corrupt(path: Path) -> bool:
    with jaxformat.open_entry(path) as f:
        data = f.read()
    try:
        jaxformat.decompress_entry(data)
    except jaxformat.EntryFormatError as e:
        return "zstandard" not in str(e)
    return False


def _read_small(path: Path) -> bytes:
    with jaxformat.open_entry(path) as f:
        return f.read(jaxformat.ATIME_BYTES + 1)


def _provably_jax_written(path: Path) -> bool:
    """Empty (a write that failed on a full disk) or starting as JAX's compressors write."""
    with jaxformat.open_entry(path) as f:
        head = f.read(4)
    return not head or jaxformat.detect_compression(head) is not None


def _quarantine(path: Path) -> Path:
    """Renames ``path`` to ``<name>.quarantined`` (numbered if taken), never overwriting."""
    for n in range(1, 1000):
        aside = path.with_name(f"{path.name}.quarantined" + (f".{n}" if n > 1 else ""))
        try:
            os.link(path, aside)  # fails if taken: rename would silently replace it
        except FileExistsError:
            continue
        path.unlink()
        return aside
    raise OSError(f"too many quarantined copies of {path.name}")

