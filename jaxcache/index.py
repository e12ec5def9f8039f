"""A per-folder snapshot of a scan, so a quick look at a large cache costs almost nothing.

Two facts make it safe:

- JAX never rewrites an entry in place (``LRUCache.put`` skips existing keys),
  so an entry's size and write time are fixed for as long as the same file
  (same name, same inode) exists. A quick scan stats only entries it has not seen.
- Creating, deleting or renaming a file changes the folder's mtime. If the
  folder's mtime is what it was when the snapshot was listed, and the listing
  was taken well after that mtime (so a later change cannot share its clock
  tick), the listing itself is still true and the folder need not be read.
  Rewriting an ``-atime`` file in place does not change the folder's mtime,
  which is why quick scans never report last-use times.

Files younger than a few seconds (possibly mid-write) are never stored, and a
snapshot that had to leave one out is not used to skip a listing.

Each row also says whether the file's leading bytes were read and found to be
what JAX writes (:func:`probe`: done when a scan first stats a file that
appeared in a folder it already follows). Together with the inode, size, mtime
and ctime of that moment it is a proof that lasts: a file whose stat still
matches is the file that was read (no tool can set a ctime back), so ``prune``
deletes it after one ``stat`` and reads only files without a proof or changed
since.

The snapshot lives in ``<folder>/.jaxcache/index``: inside a subfolder, so
that writing it changes the subfolder's mtime and not the folder's. Format
(written atomically; anything unreadable is ignored and rebuilt)::

    b"JAXCACHE-INDEX-3\\n" | uint64 meta length | meta (JSON) | uint64 count | uint64 names length
    | names (utf-8, "\\n"-joined keys)
    | int64[count * 7] rows of (inode, size, allocated, mtime ns, has atime, ctime ns, head)
"""

from __future__ import annotations

import json
import os
import stat as statmod
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from jaxcache import atomic, jaxformat

META_DIR_NAME = ".jaxcache"
_INDEX_FILE = "index"
_MAGIC = b"JAXCACHE-INDEX-3\n"
_FIELDS = 7
# A listing taken this long after the folder's last change cannot share its mtime tick.
TRUST_AFTER_NS = 2 * 10**9


# What a file's leading bytes say (Stat.head).
HEAD_UNREAD = 0
HEAD_ENTRY = 1  # zlib or zstd as JAX writes them, or an empty file (a write that died before its first byte)
HEAD_FOREIGN = 2  # read, and not what JAX writes

# Only O_NOATIME reads are done while scanning: in an uncapped cache the access
# time is the only record of use, and looking must not count as using.
_PROBE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_NOATIME = getattr(os, "O_NOATIME", 0)


class Stat(NamedTuple):
    """What the index keeps of one ``-cache`` file."""

    inode: int
    size: int
    allocated: int
    mtime_ns: int
    has_atime: int  # 0 or 1
    ctime_ns: int = 0
    head: int = HEAD_UNREAD

    @property
    def proven(self) -> bool:
        """Whether the file's leading bytes were found to be a JAX entry's."""
        return self.head == HEAD_ENTRY

    def same_file(self, st: os.stat_result) -> bool:
        """Whether ``st`` is the file this row describes, unchanged since.

        JAX never rewrites an entry in place; anything that does (or replaces
        it) moves the ctime, which no tool can set back.
        """
        return (st.st_ino == self.inode and st.st_size == self.size and st.st_mtime_ns == self.mtime_ns
                and st.st_ctime_ns == self.ctime_ns)


def probe(name: str, dir_fd: int, *, read_head: bool, noatime_only: bool = True,
          trusted_before_ns: int | None = None) -> tuple[os.stat_result, int]:
    """Stats one file without following a symlink and, if asked, reads its first bytes.

    The head is read through the descriptor that was stat-ed, so the verdict is
    about that very file. It counts as a proof (``HEAD_ENTRY``) only if the file
    had not changed for a while (its ctime before ``trusted_before_ns``): a
    later change within the same timestamp tick would not show in a stat.

    Args:
        name: the file's name in the folder.
        dir_fd: a descriptor of the folder.
        read_head: read the leading bytes of a regular file.
        noatime_only: read only where ``O_NOATIME`` is allowed (the owner's files),
            else leave the head unread rather than touch the access time.
        trusted_before_ns: only files whose ctime is older than this get a
            ``HEAD_ENTRY`` verdict (None: any).

    Returns:
        The stat and one of ``HEAD_UNREAD``, ``HEAD_ENTRY``, ``HEAD_FOREIGN``.

    Raises:
        FileNotFoundError: the file is gone.
        OSError: it cannot be stat-ed.
    """
    if not read_head:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False), HEAD_UNREAD
    try:
        fd = os.open(name, _PROBE_FLAGS | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        if noatime_only or not _NOATIME:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False), HEAD_UNREAD
        try:
            fd = os.open(name, _PROBE_FLAGS, dir_fd=dir_fd)
        except PermissionError:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False), HEAD_UNREAD
    except FileNotFoundError:
        raise
    except OSError:  # a symlink (ELOOP), a socket (ENXIO): stat what is there
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False), HEAD_UNREAD
    try:
        st = os.fstat(fd)
        if not statmod.S_ISREG(st.st_mode):
            return st, HEAD_UNREAD
        head = os.read(fd, 4) if st.st_size else b""
    except OSError:
        return os.fstat(fd), HEAD_UNREAD
    finally:
        os.close(fd)
    if st.st_size and jaxformat.detect_compression(head) is None:
        return st, HEAD_FOREIGN
    if trusted_before_ns is not None and st.st_ctime_ns >= trusted_before_ns:
        return st, HEAD_UNREAD
    return st, HEAD_ENTRY


@dataclass
class Listing:
    """A classified listing of one folder.

    Attributes:
        caches: key -> stat of every ``-cache`` entry that is a regular file.
        orphans: keys of ``-atime`` files without a ``-cache``.
        symlinks: entry-named symlinks (never followed).
        subfolders: names of subfolders (only listed for a root).
        temps: jaxcache's temporary files (an atomic write in progress, or a crashed one).
        other: how many other files there are.
        evidence: whether anything JAX or jaxcache writes is there.
        has_lockfile: whether JAX's ``.lockfile`` is there.
        complete: whether every entry is settled (nothing possibly mid-write).
        dir_mtime_ns: the folder's mtime when listed.
        listed_at_ns: when it was listed.
    """

    caches: dict[str, Stat] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    subfolders: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    other: int = 0
    evidence: bool = False
    has_lockfile: bool = False
    complete: bool = True
    dir_mtime_ns: int = 0
    listed_at_ns: int = 0

    def still_true(self, dir_mtime_ns: int) -> bool:
        """Whether the folder provably has not changed since this listing."""
        return (
            self.complete
            and dir_mtime_ns == self.dir_mtime_ns
            and self.listed_at_ns - self.dir_mtime_ns > TRUST_AFTER_NS
        )


def load(folder: Path) -> Listing | None:
    """The folder's stored listing, or None if missing or unreadable."""
    try:
        fd = os.open(folder / META_DIR_NAME / _INDEX_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        if not data.startswith(_MAGIC):
            return None
        offset = len(_MAGIC)
        (meta_length,) = array("Q", data[offset : offset + 8])
        offset += 8
        meta = json.loads(data[offset : offset + meta_length])
        offset += meta_length
        count, names_length = array("Q", data[offset : offset + 16])
        offset += 16
        names = data[offset : offset + names_length].decode("utf-8").split("\n") if count else []
        offset += names_length
        rows = array("q", data[offset : offset + count * _FIELDS * 8])
        if len(names) != count or len(rows) != count * _FIELDS:
            return None
        it = iter(rows)
        caches = dict(zip(names, map(Stat._make, zip(*[it] * _FIELDS))))
        return Listing(caches=caches, **meta)
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


def save(folder: Path, listing: Listing) -> None:
    """Writes the listing atomically; silently skipped where the folder cannot be written."""
    meta = {k: v for k, v in listing.__dict__.items() if k != "caches"}
    meta_bytes = json.dumps(meta).encode("utf-8")
    names = "\n".join(listing.caches).encode("utf-8")
    rows = array("q")
    for stat in listing.caches.values():
        rows.extend(stat)
    payload = (
        _MAGIC
        + array("Q", [len(meta_bytes)]).tobytes()
        + meta_bytes
        + array("Q", [len(listing.caches), len(names)]).tobytes()
        + names
        + rows.tobytes()
    )
    meta_dir = folder / META_DIR_NAME
    try:
        if meta_dir.is_symlink():
            return
        meta_dir.mkdir(exist_ok=True)
        atomic.write_atomically(meta_dir / _INDEX_FILE, payload)
    except OSError:
        return
