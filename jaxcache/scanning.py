"""One pass over a cache folder into :class:`CacheEntry` / :class:`CacheInfo` records.

Only directory listings and ``stat`` calls, no reads: sizes come from each
``-cache`` file's stat (or, in a quick scan, from the folder's index), and the
last use of an entry from the modification time of its ``-atime`` file (JAX
rewrites that file on every hit and write), which saves opening 50k files on a
large cache.
"""

from __future__ import annotations

import gc
import os
import re
import stat as statmod
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from jaxcache import atimes, exeformat, index, jaxformat, provenance, uses
from jaxcache.atomic import TEMP_PREFIX
from jaxcache.errors import CacheDirError, NotACacheError
from jaxcache.exeformat import StoredExecutable


class CacheEntry(NamedTuple):
    """One ``-cache`` file and what is known about it.

    A NamedTuple rather than a dataclass: a scan builds 50k of them and must stay fast.

    Attributes:
        folder: the folder holding the entry (the root or a version folder).
        key: JAX's key, ``<module>-<hash>``.
        module: the jitted function's module name, e.g. ``jit_step``.
        bytes: apparent size of the ``-cache`` file.
        allocated_bytes: disk space taken by the ``-cache`` file (``st_blocks * 512``).
        written: when the entry was written (mtime, seconds since the epoch).
        last_used: the last recorded use: the ``-atime`` file's time (JAX rewrites it on
            every hit and write of a capped cache) or jaxcache's use log (see
            :mod:`jaxcache.uses`), whichever is later; None if neither has one, or if
            the scan did not look (``last_used=False``).
        has_atime: whether an ``-atime`` file exists.
        fs_atime: the filesystem's access time of the ``-cache`` file; None in a quick scan.
        version: the jaxlib version that wrote it, None when unknown.
        platform: the platform that wrote it, None when unknown.
        stat: the file as the scan saw it (inode, times, and whether its leading
            bytes proved it a JAX entry): what prune compares before deleting.
    """

    folder: Path
    key: str
    module: str
    bytes: int
    allocated_bytes: int
    written: float
    last_used: float | None
    has_atime: bool
    fs_atime: float | None
    version: str | None
    platform: str | None
    stat: index.Stat | None = None

    @property
    def path(self) -> Path:
        return self.folder / jaxformat.cache_file_name(self.key)

    @property
    def atime_path(self) -> Path:
        return self.folder / jaxformat.atime_file_name(self.key)

    @property
    def recency(self) -> float:
        """Best estimate of the last use.

        A recorded use when there is one (``last_used``). Otherwise the file
        system's access time is the only evidence: JAX reads the whole file on
        every hit, but under Linux's default ``relatime`` that moves the access
        time at most once a day (on a ``noatime`` mount never), so the true
        last use may be later (:func:`jaxcache.uses.atime_resolution`).
        jaxcache itself reads entries with ``O_NOATIME`` so that looking does
        not count as use.
        """
        if self.last_used is not None:
            return self.last_used
        return self.written if self.fs_atime is None else max(self.written, self.fs_atime)


@dataclass(frozen=True)
class FolderInfo:
    """A scanned folder: the root or a version folder jaxcache made."""

    path: Path
    version: str | None
    jax_version: str | None
    has_lockfile: bool


@dataclass(frozen=True)
class CacheInfo:
    """Everything one scan found.

    Attributes:
        root: the cache root that was scanned.
        entries: every ``-cache`` entry, sorted by key.
        orphan_atimes: ``-atime`` files whose ``-cache`` is gone.
        folders: the root and each version folder scanned.
        symlinks: entry-named symlinks, reported and never followed.
        temp_files: jaxcache's temporary files (atomic writes in progress or crashed).
        other_files: how many files and folders are not JAX's or jaxcache's.
        scanned_at: when the scan ran (seconds since the epoch).
        executables: the executable store's files (see :mod:`jaxcache.executables`).
    """

    root: Path
    entries: tuple[CacheEntry, ...]
    orphan_atimes: tuple[Path, ...]
    folders: tuple[FolderInfo, ...]
    symlinks: tuple[Path, ...] = ()
    temp_files: tuple[Path, ...] = ()
    other_files: int = 0
    scanned_at: float = field(default_factory=time.time)
    executables: tuple[StoredExecutable, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.entries)

    @property
    def allocated_bytes(self) -> int:
        return sum(e.allocated_bytes for e in self.entries)


# The names JAX gives entries (see jaxformat.parse_entry_name, which this
# mirrors as one C-level regex, applied only to names the index has not seen).
_ENTRY_RE = re.compile(r"(.+)-([0-9a-f]{64})-(cache|atime)", re.DOTALL)
_JAXCACHE_NAMES = frozenset(
    {provenance.MARKER_NAME, provenance.WRITES_LOG_NAME, index.META_DIR_NAME, jaxformat.LOCKFILE_NAME,
     atimes.STAMP_NAME}
)
# Files younger than this may be mid-write (JAX writes without a rename).
_SETTLE_NS = 10 * 10**9


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Builds 50k small records without the cyclic GC re-walking them (they hold no cycles)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def scan(root: Path, *, last_used: bool = True, quick: bool = False) -> CacheInfo:
    """Scans a cache root and its version folders.

    Args:
        root: the cache root (or a single version folder, or a flat JAX cache).
        last_used: stat each ``-atime`` file for the entry's last use.
        quick: trust each folder's index (see :mod:`jaxcache.index`): skip the
            listing of an unchanged folder and the stat of entries seen before.
            A full scan stats everything and refreshes the index.

    Raises:
        CacheDirError: the folder is missing, not a folder, or unreadable.
        NotACacheError: the folder holds files but nothing that JAX or jaxcache writes.
    """
    with _gc_paused():
        return _scan(Path(root), last_used=last_used, quick=quick)


def _scan(root: Path, *, last_used: bool, quick: bool) -> CacheInfo:
    _require_folder(root)
    entries: list[CacheEntry] = []
    orphans: list[Path] = []
    symlinks: list[Path] = []
    temps: list[Path] = []
    folders: list[FolderInfo] = []
    stored: list[StoredExecutable] = []
    other = 0
    evidence = False

    root_marker = provenance.read_marker(root)
    pending: list[tuple[Path, provenance.VersionInfo | None]] = [(root, root_marker)]
    while pending:
        folder, marker = pending.pop()
        is_root = folder == root
        listing, fs_atimes = _list_folder(folder, look_for_subfolders=is_root and root_marker is None, quick=quick)
        entries.extend(_entries(folder, listing, marker, fs_atimes, last_used=last_used))
        orphans.extend(folder / jaxformat.atime_file_name(k) for k in listing.orphans)
        symlinks.extend(folder / name for name in listing.symlinks)
        temps.extend(folder / name for name in listing.temps)
        other += listing.other
        evidence = evidence or listing.evidence
        found, not_stored, store_temps = exeformat.list_folder(folder)
        # A stored file names the jaxlib that wrote it (in a flat cache too, unlike JAX's entries).
        stored.extend(replace(item, version=marker.jaxlib if marker else item.jaxlib) for item in found)
        other += len(not_stored)
        temps.extend(store_temps)
        evidence = evidence or bool(found)
        folders.append(FolderInfo(path=folder, version=marker.jaxlib if marker else None,
                                  jax_version=marker.jax if marker else None, has_lockfile=listing.has_lockfile))
        for name in listing.subfolders:
            sub_marker = provenance.read_marker(folder / name)
            if sub_marker is not None:
                pending.append((folder / name, sub_marker))
                evidence = True
            else:
                other += 1
    if not evidence and other:
        raise NotACacheError(
            f"{root} does not look like a JAX compilation cache (no cache entries among {other} other files); "
            "nothing was changed"
        )
    entries.sort(key=lambda e: e.key)
    return CacheInfo(
        root=root,
        entries=tuple(entries),
        orphan_atimes=tuple(sorted(orphans)),
        folders=tuple(sorted(folders, key=lambda f: str(f.path))),
        symlinks=tuple(sorted(symlinks)),
        temp_files=tuple(sorted(temps)),
        other_files=other,
        executables=tuple(stored),
    )


def _require_folder(root: Path) -> None:
    try:
        st = root.stat()
    except FileNotFoundError:
        raise CacheDirError(f"no cache folder at {root}") from None
    except PermissionError:
        raise CacheDirError(f"permission denied: cannot read {root}") from None
    except OSError as e:
        raise CacheDirError(f"cannot read {root}: {e.strerror}") from None
    if not statmod.S_ISDIR(st.st_mode):
        raise CacheDirError(f"{root} is a file, not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise CacheDirError(f"permission denied: cannot read {root}")


def _list_folder(folder: Path, *, look_for_subfolders: bool, quick: bool) -> tuple[index.Listing, dict[str, float]]:
    """Lists and classifies one folder, from its index where that is provably still true.

    Returns the listing and the filesystem access time of each entry stat-ed
    (every entry, unless ``quick``).
    """
    try:
        dir_mtime_ns = os.stat(folder).st_mtime_ns
    except OSError as e:
        raise CacheDirError(f"cannot read {folder}: {e.strerror}") from None
    writable = os.access(folder, os.W_OK)
    stored = index.load(folder) if quick or writable else None
    if quick and stored is not None and stored.still_true(dir_mtime_ns):
        return stored, {}
    fs_atimes: dict[str, float] = {}
    known = stored.caches if (quick and stored is not None) else {}
    previous = stored.caches if stored is not None else {}
    # A file that appears in a folder the index follows has its leading bytes read
    # when a scan first stats it (once in its life), so that prune can trust its
    # stat instead of reading it under JAX's lock. Not on a folder's first scan:
    # of a large folder, prune reads only the few it deletes, cheaper than all.
    read_heads = writable and stored is not None
    # Files too young to prove last time (copied, or just written) are read now.
    retry_after = stored.listed_at_ns - index.TRUST_AFTER_NS if stored is not None else 0

    listing = index.Listing(dir_mtime_ns=dir_mtime_ns, listed_at_ns=time.time_ns())
    cache_inodes: dict[str, int] = {}
    atimes: set[str] = set()
    match = _ENTRY_RE.fullmatch
    try:
        it = os.scandir(folder)
    except OSError as e:
        raise CacheDirError(f"cannot list {folder}: {e.strerror}") from None
    with it:
        for dirent in it:
            name = dirent.name
            key = name[:-6]
            if name.endswith("-cache") and key in known:  # validated when it was indexed
                cache_inodes[key] = dirent.inode()
                continue
            m = match(name)
            if m is not None:
                if dirent.is_symlink():
                    listing.symlinks.append(name)
                elif m[3] == "cache":
                    cache_inodes[key] = dirent.inode()
                else:
                    atimes.add(key)
            elif name.startswith(TEMP_PREFIX):
                listing.evidence = True
                listing.temps.append(name)
            elif name == exeformat.FOLDER_NAME and dirent.is_dir(follow_symlinks=False):
                pass  # the executable store: listed (and its files proven) by the scan
            elif name in _JAXCACHE_NAMES or name in jaxformat.XLA_SUBCACHE_NAMES:
                listing.evidence = True
                listing.has_lockfile = listing.has_lockfile or name == jaxformat.LOCKFILE_NAME
            elif look_for_subfolders and dirent.is_dir(follow_symlinks=False):
                listing.subfolders.append(name)
            else:
                listing.other += 1
    listing.evidence = listing.evidence or bool(cache_inodes) or bool(atimes)

    settled_before = listing.listed_at_ns - _SETTLE_NS
    trusted_before = listing.listed_at_ns - index.TRUST_AFTER_NS
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for key, inode in cache_inodes.items():
            has_atime = key in atimes
            cached = known.get(key)
            if cached is not None and cached.inode == inode and not (
                    read_heads and cached.head == index.HEAD_UNREAD and cached.ctime_ns >= retry_after):
                listing.caches[key] = cached if cached.has_atime == has_atime else cached._replace(has_atime=int(has_atime))
                continue
            name = key + "-cache"
            try:
                head = None
                prior = previous.get(key)
                if prior is not None and prior.proven:  # a full scan: keep the proof of an unchanged file
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    head = prior.head if prior.same_file(st) else None
                if head is None:
                    st, head = index.probe(name, fd, read_head=read_heads, trusted_before_ns=trusted_before)
            except FileNotFoundError:
                continue  # deleted between listing and stat (JAX eviction, another prune)
            if not statmod.S_ISREG(st.st_mode):
                listing.other += 1
                continue
            listing.caches[key] = index.Stat(st.st_ino, st.st_size, st.st_blocks * 512, st.st_mtime_ns, int(has_atime),
                                             st.st_ctime_ns, head)
            fs_atimes[key] = st.st_atime
            if st.st_mtime_ns > settled_before:
                listing.complete = False
    finally:
        os.close(fd)
    listing.orphans = sorted(k for k in atimes if k not in listing.caches)
    if listing.evidence and writable and (
        stored is None or _changed(stored, listing) or listing.still_true(dir_mtime_ns) > stored.still_true(dir_mtime_ns)
    ):
        index.save(folder, _settled(listing, settled_before))
    return listing, fs_atimes


def _changed(stored: index.Listing, listing: index.Listing) -> bool:
    return (stored.caches != listing.caches or stored.dir_mtime_ns != listing.dir_mtime_ns
            or stored.orphans != listing.orphans or stored.other != listing.other or stored.temps != listing.temps)


def _settled(listing: index.Listing, settled_before: int) -> index.Listing:
    """The listing minus entries that may be mid-write (they are stat-ed again next time)."""
    if listing.complete:
        return listing
    caches = {k: s for k, s in listing.caches.items() if s.mtime_ns <= settled_before}
    return index.Listing(**{**listing.__dict__, "caches": caches})


def _entries(folder: Path, listing: index.Listing, marker: provenance.VersionInfo | None,
             fs_atimes: dict[str, float], *, last_used: bool) -> list[CacheEntry]:
    """CacheEntry records for one listed folder (stat-ing -atime files for last use if asked)."""
    version = marker.jaxlib if marker is not None else None
    writes = provenance.load_writes(folder) if marker is not None else {}
    recorded = uses.load_uses(folder) if last_used else {}
    entries = []
    append = entries.append
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if last_used else -1
    try:
        for key, stat in listing.caches.items():
            used = None
            fs_atime = fs_atimes.get(key)
            if last_used:
                try:
                    if stat.has_atime:
                        used = os.stat(key + "-atime", dir_fd=fd, follow_symlinks=False).st_mtime
                    elif fs_atime is None:  # uncapped: the filesystem's atime is the only record
                        fs_atime = os.stat(key + "-cache", dir_fd=fd, follow_symlinks=False).st_atime
                except FileNotFoundError:
                    pass
                use = recorded.get(key)
                if use is not None and (used is None or use > used):
                    used = use
            append(CacheEntry(folder, key, key[:-65], stat.size, stat.allocated, stat.mtime_ns / 1e9, used,
                              bool(stat.has_atime), fs_atime, version,
                              writes[key].platform if key in writes else None, stat))
    finally:
        if fd >= 0:
            os.close(fd)
    return entries


def require_cache_or_new(root: Path) -> None:
    """Refuses a folder that holds files but nothing JAX or jaxcache writes.

    Commands that create entries (``run``, ``hook``) call it before creating
    anything, so a home folder passed by mistake never gets ``jaxlib-*/`` and
    ``.jaxcache/`` folders; ``jaxcache init`` marks a folder a cache on purpose.
    Stops at the first file that is evidence, so a large cache costs one read.

    Raises:
        CacheDirError: ``root`` is a file, or cannot be read.
        NotACacheError: ``root`` holds only files and folders that are not a cache's.
    """
    others = 0
    try:
        with os.scandir(root) as it:
            for dirent in it:
                name = dirent.name
                if (name in _JAXCACHE_NAMES or name in jaxformat.XLA_SUBCACHE_NAMES or name.startswith(TEMP_PREFIX)
                        or name == exeformat.FOLDER_NAME or _ENTRY_RE.fullmatch(name) is not None):
                    return
                if name.startswith(provenance.VERSION_DIR_PREFIX) and provenance.read_marker(root / name):
                    return
                others += 1
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise CacheDirError(f"{root} is a file, not a folder") from None
    except OSError as e:
        raise CacheDirError(f"cannot read {root}: {e.strerror}") from None
    if others:
        raise NotACacheError(
            f"{root} is not empty and does not look like a JAX cache ({others} other files and folders); "
            "give a new or empty folder, or run `jaxcache init` on it to make it a cache on purpose"
        )
