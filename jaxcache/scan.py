"""One pass over a cache folder into frozen :class:`CacheEntry` / :class:`CacheInfo` records.

Only ``stat`` calls, no reads: ``-cache`` sizes come from their own stat, and
the last use of an entry from the modification time of its ``-atime`` file
(JAX rewrites that file on every hit and write), which saves opening 50k
files on a large cache.
"""

from __future__ import annotations

import os
import stat as statmod
import time
from dataclasses import dataclass, field
from pathlib import Path

from jaxcache import jaxformat, provenance
from jaxcache.errors import CacheDirError, NotACacheError


@dataclass(frozen=True)
class CacheEntry:
    """One ``-cache`` file and what is known about it.

    Attributes:
        folder: the folder holding the entry (the root or a version folder).
        key: JAX's key, ``<module>-<hash>``.
        module: the jitted function's module name, e.g. ``jit_step``.
        bytes: apparent size of the ``-cache`` file.
        allocated_bytes: disk space taken (``st_blocks * 512``), ``-atime`` included.
        written: when the entry was written (mtime, seconds since the epoch).
        last_used: last hit or write from the ``-atime`` file, None if it has none.
        fs_atime: the filesystem's access time of the ``-cache`` file (coarse: relatime).
        version: the jaxlib version that wrote it, None when unknown.
        platform: the platform that wrote it, None when unknown.
    """

    folder: Path
    key: str
    module: str
    bytes: int
    allocated_bytes: int
    written: float
    last_used: float | None
    fs_atime: float
    version: str | None
    platform: str | None

    @property
    def path(self) -> Path:
        return self.folder / jaxformat.cache_file_name(self.key)

    @property
    def atime_path(self) -> Path:
        return self.folder / jaxformat.atime_file_name(self.key)

    @property
    def has_atime(self) -> bool:
        return self.last_used is not None

    @property
    def recency(self) -> float:
        """Best estimate of the last use: the ``-atime`` record, else filesystem times."""
        if self.last_used is not None:
            return self.last_used
        return max(self.written, self.fs_atime)


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
        entries: every ``-cache`` entry.
        orphan_atimes: ``-atime`` files whose ``-cache`` is gone.
        folders: the root and each version folder scanned.
        symlinks: entry-named symlinks, reported and never followed.
        other_files: how many files and folders are not JAX's or jaxcache's.
        scanned_at: when the scan ran (seconds since the epoch).
    """

    root: Path
    entries: tuple[CacheEntry, ...]
    orphan_atimes: tuple[Path, ...]
    folders: tuple[FolderInfo, ...]
    symlinks: tuple[Path, ...] = ()
    other_files: int = 0
    scanned_at: float = field(default_factory=time.time)

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.entries)

    @property
    def allocated_bytes(self) -> int:
        return sum(e.allocated_bytes for e in self.entries)


_JAXCACHE_FILES = frozenset({provenance.MARKER_NAME, provenance.WRITES_LOG_NAME, jaxformat.LOCKFILE_NAME})


def scan(root: Path) -> CacheInfo:
    """Scans a cache root and its version folders.

    Raises:
        CacheDirError: the folder is missing, not a folder, or unreadable.
        NotACacheError: the folder holds files but nothing that JAX or jaxcache writes.
    """
    root = Path(root)
    _require_folder(root)
    entries: list[CacheEntry] = []
    orphans: list[Path] = []
    symlinks: list[Path] = []
    folders: list[FolderInfo] = []
    other = 0
    evidence = False

    root_marker = provenance.read_marker(root)
    pending: list[tuple[Path, provenance.VersionInfo | None]] = [(root, root_marker)]
    while pending:
        folder, marker = pending.pop()
        result = _scan_folder(folder, marker, nested=folder != root or root_marker is not None)
        entries.extend(result.entries)
        orphans.extend(result.orphans)
        symlinks.extend(result.symlinks)
        other += result.other
        evidence = evidence or result.evidence
        folders.append(
            FolderInfo(
                path=folder,
                version=marker.jaxlib if marker else None,
                jax_version=marker.jax if marker else None,
                has_lockfile=result.has_lockfile,
            )
        )
        if folder == root:
            for sub in result.subfolders:
                sub_marker = provenance.read_marker(sub)
                if sub_marker is not None:
                    pending.append((sub, sub_marker))
                    evidence = True
                else:
                    other += 1
    if not evidence and other:
        raise NotACacheError(
            f"{root} does not look like a JAX compilation cache (no cache entries among {other} other files); "
            "nothing was changed"
        )
    entries.sort(key=lambda e: (str(e.folder), e.key))
    return CacheInfo(
        root=root,
        entries=tuple(entries),
        orphan_atimes=tuple(sorted(orphans)),
        folders=tuple(sorted(folders, key=lambda f: str(f.path))),
        symlinks=tuple(sorted(symlinks)),
        other_files=other,
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


@dataclass
class _FolderScan:
    entries: list[CacheEntry] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    symlinks: list[Path] = field(default_factory=list)
    subfolders: list[Path] = field(default_factory=list)
    other: int = 0
    evidence: bool = False
    has_lockfile: bool = False


def _scan_folder(folder: Path, marker: provenance.VersionInfo | None, *, nested: bool) -> _FolderScan:
    out = _FolderScan()
    cache_names: dict[str, jaxformat.EntryName] = {}
    atime_names: dict[str, jaxformat.EntryName] = {}
    try:
        listing = list(os.scandir(folder))
    except OSError as e:
        raise CacheDirError(f"cannot list {folder}: {e.strerror}") from None
    for dirent in listing:
        name = dirent.name
        parsed = jaxformat.parse_entry_name(name)
        if parsed is not None:
            if dirent.is_symlink():
                out.symlinks.append(folder / name)
            elif parsed.kind == "cache":
                cache_names[parsed.key] = parsed
            else:
                atime_names[parsed.key] = parsed
            continue
        if name in _JAXCACHE_FILES or name in jaxformat.XLA_SUBCACHE_NAMES or name.startswith(".jaxcache-tmp-"):
            out.evidence = True
            out.has_lockfile = out.has_lockfile or name == jaxformat.LOCKFILE_NAME
        elif not nested and dirent.is_dir(follow_symlinks=False):
            out.subfolders.append(folder / name)
        else:
            out.other += 1
    out.evidence = out.evidence or bool(cache_names) or bool(atime_names)

    platforms = provenance.load_platforms(folder) if marker is not None else {}
    version = marker.jaxlib if marker is not None else None
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for key, parsed in cache_names.items():
            try:
                st = os.stat(jaxformat.cache_file_name(key), dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted between listing and stat (JAX eviction, another prune)
            if not statmod.S_ISREG(st.st_mode):
                out.other += 1
                continue
            last_used = None
            allocated = st.st_blocks * 512
            if key in atime_names:
                try:
                    ast = os.stat(jaxformat.atime_file_name(key), dir_fd=fd, follow_symlinks=False)
                    last_used = ast.st_mtime
                    allocated += ast.st_blocks * 512
                except FileNotFoundError:
                    pass
            out.entries.append(
                CacheEntry(
                    folder=folder,
                    key=key,
                    module=parsed.module,
                    bytes=st.st_size,
                    allocated_bytes=allocated,
                    written=st.st_mtime,
                    last_used=last_used,
                    fs_atime=st.st_atime,
                    version=version,
                    platform=platforms.get(key),
                )
            )
    finally:
        os.close(fd)
    out.orphans = [folder / jaxformat.atime_file_name(k) for k in atime_names if k not in cache_names]
    return out
