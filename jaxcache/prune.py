"""Plan, then execute: which entries to delete and why, then deleting exactly those.

:func:`plan_prune` is pure: it looks only at a :class:`CacheInfo`, so
``--dry-run`` is "print the plan". :func:`execute` deletes the planned entries
under JAX's ``.lockfile``, each ``-cache`` with its ``-atime``, after proving
that each file is still the cache entry the scan saw.
"""

from __future__ import annotations

import fnmatch
import math
import os
import stat as statmod
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from jaxcache import exeformat, index, jaxformat, keyparts, provenance, uses
from jaxcache.errors import UsageError
from jaxcache.exeformat import StoredExecutable
from jaxcache.locking import BATCH_SIZE, folder_lock
from jaxcache.scanning import CacheEntry, CacheInfo


@dataclass(frozen=True)
class Deletion:
    """One entry to delete and why.

    The reason is worded only when asked for: a plan may hold 50k deletions
    of which a person reads twenty.
    """

    entry: CacheEntry
    explain: Callable[[CacheEntry], str] = field(repr=False, compare=False)

    @property
    def reason(self) -> str:
        return self.explain(self.entry)


@dataclass(frozen=True)
class PrunePlan:
    """What a prune would delete, and how much it frees.

    ``executables`` are files of the executable store the same policy selects
    (they hold compiled kernels too, keyed without JAX's key); ``kept_bytes``
    counts the store files kept.
    """

    root: Path
    deletions: tuple[Deletion, ...]
    kept_entries: int
    kept_bytes: int
    executables: tuple[StoredExecutable, ...] = ()

    @property
    def freed_bytes(self) -> int:
        return sum(d.entry.bytes for d in self.deletions) + sum(e.bytes for e in self.executables)

    @property
    def keys(self) -> list[str]:
        return [d.entry.key for d in self.deletions]

    def as_dict(self) -> dict[str, Any]:
        return {"cache_dir": str(self.root), "deleted": self.keys, "paths": [str(d.entry.path) for d in self.deletions],
                "reasons": [d.reason for d in self.deletions],
                "freed_bytes": self.freed_bytes, "kept_entries": self.kept_entries, "kept_bytes": self.kept_bytes,
                "executables_deleted": [e.key for e in self.executables]}


@dataclass(frozen=True)
class PruneResult:
    """What :func:`execute` did."""

    deleted: tuple[CacheEntry, ...]
    skipped: tuple[tuple[CacheEntry, str], ...]
    executables_deleted: tuple[StoredExecutable, ...] = ()
    executables_skipped: tuple[tuple[StoredExecutable, str], ...] = ()

    @property
    def freed_bytes(self) -> int:
        return sum(e.bytes for e in self.deleted) + sum(e.bytes for e in self.executables_deleted)

    def as_dict(self) -> dict[str, Any]:
        skipped = [(e.key, why) for e, why in self.skipped] + [(e.path.name, why) for e, why in self.executables_skipped]
        return {"deleted": [e.key for e in self.deleted], "paths": [str(e.path) for e in self.deleted],
                "freed_bytes": self.freed_bytes,
                "skipped": [{"key": key, "reason": why} for key, why in skipped],
                "executables_deleted": [e.key for e in self.executables_deleted]}


def validate_glob(pattern: str) -> str:
    """Rejects globs that can never match a module name (empty, or containing a path)."""
    if not pattern or "/" in pattern or "\x00" in pattern:
        raise UsageError(f"invalid --name pattern {pattern!r}: give a glob over module names, e.g. 'jit_step*'")
    if pattern.count("[") != pattern.count("]"):
        raise UsageError(f"invalid --name pattern {pattern!r}: unbalanced [ ]")
    return pattern


def matches_name(entry: CacheEntry | StoredExecutable, pattern: str) -> bool:
    """A glob over the module name (``jit_step*``) or the whole key."""
    return fnmatch.fnmatchcase(entry.module, pattern) or fnmatch.fnmatchcase(entry.key, pattern)


def plan_prune(
    info: CacheInfo,
    *,
    stale: bool = False,
    keep_versions: Iterable[str] = (),
    installed_version: str | None = None,
    older_than: timedelta | None = None,
    max_size: int | None = None,
    name: str | None = None,
    everything: bool = False,
    now: float | None = None,
    atime_resolution: float | None = None,
) -> PrunePlan:
    """Builds the plan. Selectors (stale, older_than, name) combine with AND;
    then, if ``max_size`` is given, the least recently used of what is left go
    until the cache fits (ties broken by stored compile time, cheapest first).

    Args:
        info: a scan of the cache.
        stale: select entries of a known jaxlib version other than ``installed_version``
            and ``keep_versions``. Entries of unknown provenance are never stale.
        keep_versions: versions whose entries are kept by ``stale``.
        installed_version: the jaxlib version in use (required with ``stale``).
        older_than: select entries not used for this long.
        max_size: a size in bytes the cache must fit in afterwards.
        name: a glob over module names (or keys) to select.
        everything: select every entry (``clear``).
        now: the current time, for tests.
        atime_resolution: how stale the file system's access time may be, for
            entries with no recorded use (default: read from the mount of
            ``info.root``, see :func:`jaxcache.uses.atime_resolution`).

    Raises:
        UsageError: no policy given; ``stale`` without a version to compare with;
            or ``older_than`` finer than what the file system can tell about the
            last use of entries that have no recorded use (refused, rather than
            deleting what may have been used a moment ago).
    """
    now = time.time() if now is None else now
    Item = CacheEntry | StoredExecutable
    selectors: list[tuple[Callable[[Item], bool], Callable[[Item], str]]] = []
    if everything:
        selectors.append((lambda e: True, lambda e: "clear"))
    if stale:
        keep = set(keep_versions)
        if installed_version is None and not keep:
            raise UsageError("--stale needs an installed jaxlib (none found) or at least one --keep-version")
        if installed_version is not None:
            keep.add(installed_version)
        selectors.append(
            (lambda e: e.version is not None and e.version not in keep, lambda e: f"stale (jaxlib {e.version})")
        )
    if older_than is not None:
        if atime_resolution is None:
            from jaxcache.uses import atime_resolution as resolution_of

            atime_resolution = resolution_of(info.root)
        resolution = atime_resolution
        _require_known_last_uses(info, older_than, resolution, now)
        cutoff = now - older_than.total_seconds()

        def last(e: CacheEntry | StoredExecutable) -> float:
            return latest_possible_use(e, resolution, now) if isinstance(e, CacheEntry) else e.recency

        selectors.append((lambda e: last(e) < cutoff, lambda e: f"unused for {_days(now - last(e))}"))
    if name is not None:
        pattern = validate_glob(name)
        selectors.append((lambda e: matches_name(e, pattern), lambda e: f"name matches {pattern!r}"))
    if not selectors and max_size is None:
        raise UsageError("nothing to prune: give --stale, --older-than, --max-size or --name")

    def selected(item: Item) -> bool:
        return bool(selectors) and all(select(item) for select, _ in selectors)

    def explain_selected(item: CacheEntry) -> str:
        return "; ".join(why(item) for _, why in selectors)

    def explain_over_size(item: CacheEntry) -> str:
        return f"over --max-size (last used {_days(now - item.recency)} ago)"

    deletions: list[Deletion] = []
    kept: list[CacheEntry] = []
    for entry in info.entries:
        if selected(entry):
            deletions.append(Deletion(entry, explain_selected))
        else:
            kept.append(entry)
    gone_executables = [e for e in info.executables if selected(e)]
    kept_executables = [e for e in info.executables if not selected(e)]
    if max_size is not None:
        # Stored executables go first: each is a faster copy of a kernel whose
        # JAX entry stays, so dropping one costs a trace, never a compile.
        kept_bytes = sum(e.bytes for e in kept) + sum(e.bytes for e in kept_executables)
        for item in sorted(kept_executables, key=lambda e: e.recency):
            if kept_bytes <= max_size:
                break
            gone_executables.append(item)
            kept_bytes -= item.bytes
        for entry in lru_order(kept):
            if kept_bytes <= max_size:
                break
            deletions.append(Deletion(entry, explain_over_size))
            kept_bytes -= entry.bytes
        evicted = {d.entry.key for d in deletions}
        kept = [e for e in kept if e.key not in evicted]
        kept_executables = [e for e in kept_executables if e not in gone_executables]
    return PrunePlan(
        root=info.root, deletions=tuple(deletions), kept_entries=len(kept),
        kept_bytes=sum(e.bytes for e in kept) + sum(e.bytes for e in kept_executables),
        executables=tuple(gone_executables),
    )


def latest_possible_use(entry: CacheEntry, resolution: float, now: float) -> float:
    """The latest moment an entry may have been used, given what is recorded.

    A recorded use is exact. Without one, under ``relatime`` the first read after
    a write moves the access time and later reads move it at most once a day, so
    an entry read since its write (access time after its write time) may have
    been used until a day after that read; one never read was last used at its
    write. Under ``noatime`` nothing after the write is known.
    """
    if entry.last_used is not None:
        return entry.last_used
    if resolution <= 0:
        return entry.recency
    if resolution == math.inf:
        return now
    atime = entry.fs_atime if entry.fs_atime is not None else entry.written
    return entry.written if atime <= entry.written else min(now, atime + resolution)


def _require_known_last_uses(info: CacheInfo, older_than: timedelta, resolution: float, now: float) -> None:
    """Refuses an age finer than the file system can tell, where some entry's use was never recorded.

    At an age of the resolution or more, an entry that may have been used inside
    the period is simply kept (:func:`latest_possible_use`); below it, most
    entries read lately would be unknowable, so nothing is guessed.
    """
    if older_than.total_seconds() >= resolution:
        return
    cutoff = now - older_than.total_seconds()
    unknown = sum(1 for e in info.entries
                  if e.last_used is None and e.recency < cutoff <= latest_possible_use(e, resolution, now))
    if not unknown:
        return
    tells = ("never records a read (a noatime mount, an object store)" if resolution == math.inf
             else "moves the access time at most once a day (relatime)")
    enough = "" if resolution == math.inf else f"give --older-than {_flag_duration(resolution)} or more, or "
    raise UsageError(
        f"refusing --older-than {_days(older_than.total_seconds())}: {unknown} "
        f"{'entry has' if unknown == 1 else 'entries have'} no recorded use and its storage {tells}, so "
        f"{'it' if unknown == 1 else 'they'} may have been used since; {enough}run JAX through jaxcache "
        "(configure(), `pytest --jaxcache`, or `jaxcache run` for a local folder) so that uses are recorded"
    )


def _flag_duration(seconds: float) -> str:
    """A duration as --older-than takes it: ``1d``, ``6h``, ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{math.ceil(seconds)}s"


def lru_order(entries: Iterable[CacheEntry]) -> list[CacheEntry]:
    """Least recently used first; among equal last uses, the cheapest to recompile first.

    Compile times are read (from entry headers) only for entries whose last use
    ties with another's, so a large cache with distinct times costs no reads.
    """
    ordered = sorted(entries, key=lambda e: e.recency)
    result: list[CacheEntry] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1].recency == ordered[i].recency:
            j += 1
        group = ordered[i : j + 1]
        if len(group) > 1:
            group.sort(key=_compile_seconds_or_zero)
        result.extend(group)
        i = j + 1
    return result


def _compile_seconds_or_zero(entry: CacheEntry) -> int:
    if not isinstance(entry.path, Path):
        return 0  # an object in a store (jaxcache.bucket): not fetched for a tie-break
    try:
        return jaxformat.read_compile_seconds(entry.path) or 0
    except (OSError, jaxformat.EntryFormatError):
        return 0


def _days(seconds: float) -> str:
    import humanize

    return humanize.naturaldelta(timedelta(seconds=max(0.0, seconds)))


def execute(plan: PrunePlan, *, progress: Callable[[int], None] | None = None) -> PruneResult:
    """Deletes the planned entries, folder by folder, under each ``.lockfile``.

    Each file is checked again right before it goes: a regular file (not a
    symlink) with an entry's name, in the folder that was scanned, whose
    leading bytes are zlib or zstd as JAX writes them. Those bytes are read
    again only for a file that changed since the scan proved it (see
    :class:`jaxcache.index.Stat`): an unchanged one costs one ``stat``.
    Anything else is skipped and reported, never deleted.

    Args:
        plan: the plan from :func:`plan_prune`.
        progress: called with the number of entries handled after each batch.
    """
    deleted: list[CacheEntry] = []
    skipped: list[tuple[CacheEntry, str]] = []
    by_folder: dict[Path, list[CacheEntry]] = {}
    for deletion in plan.deletions:
        by_folder.setdefault(deletion.entry.folder, []).append(deletion.entry)
    done = 0
    for folder, entries in by_folder.items():
        for start in range(0, len(entries), BATCH_SIZE):
            batch = entries[start : start + BATCH_SIZE]
            with folder_lock(folder):
                dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    for entry in batch:
                        reason = _delete_entry(dir_fd, entry)
                        if reason is None:
                            deleted.append(entry)
                        else:
                            skipped.append((entry, reason))
                finally:
                    os.close(dir_fd)
            done += len(batch)
            if progress is not None:
                progress(done)
        with folder_lock(folder):
            provenance.compact_writes(folder)  # else the log keeps a line per entry ever written
            gone = [e.key for e in deleted if e.folder == folder]
            uses.forget_uses(folder, gone)
            keyparts.forget_keys(folder, gone)
    gone, not_gone = [], []
    for item in plan.executables:
        reason = exeformat.delete(item)
        if reason is None:
            gone.append(item)
        else:
            not_gone.append((item, reason))
    return PruneResult(deleted=tuple(deleted), skipped=tuple(skipped),
                       executables_deleted=tuple(gone), executables_skipped=tuple(not_gone))


def _delete_entry(dir_fd: int, entry: CacheEntry) -> str | None:
    """Deletes one entry relative to its folder's descriptor; returns why not, if not.

    The proof that the file is a JAX entry: the scan read its leading bytes and
    the file is still the one it read (same inode, size, mtime and ctime). Any
    file without that proof has its leading bytes read now.
    """
    cache_name = jaxformat.cache_file_name(entry.key)
    parsed = jaxformat.parse_entry_name(cache_name)
    if parsed is None or parsed.key != entry.key:
        return "not an entry name"
    seen = entry.stat
    try:
        head = index.HEAD_UNREAD
        if seen is not None and seen.proven:
            st = os.stat(cache_name, dir_fd=dir_fd, follow_symlinks=False)
            head = seen.head if seen.same_file(st) else index.HEAD_UNREAD
        if head == index.HEAD_UNREAD:
            st, head = index.probe(cache_name, dir_fd, read_head=True, noatime_only=False)
    except FileNotFoundError:
        return "already gone"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not statmod.S_ISREG(st.st_mode):
        return "not a regular file"
    if head == index.HEAD_FOREIGN:
        return "contents are not a JAX cache entry"
    if head != index.HEAD_ENTRY:
        return "unreadable (its leading bytes could not be read)"
    try:
        # -cache first, then -atime, as JAX's own eviction does.
        os.unlink(cache_name, dir_fd=dir_fd)
    except FileNotFoundError:
        return "already gone"
    except OSError as e:
        return f"cannot delete ({e.strerror})"
    try:
        os.unlink(jaxformat.atime_file_name(entry.key), dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    return None
