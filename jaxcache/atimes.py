"""Every entry of a size-capped folder needs its ``-atime`` file.

JAX writes ``-atime`` files only while a size cap is set, and its eviction
reads one for every entry (``jax/_src/lru_cache.py``, ``_evict_if_needed``).
So a folder filled without a cap, then given one, makes every later write
fail with FileNotFoundError (jax-ml/jax#39880). `ensure_atimes` gives each
such entry an ``-atime`` equal to its write time, under JAX's lock; callers
that set a cap run it before JAX does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from jaxcache import jaxformat

__all__ = ["create_atime", "ensure_atimes"]

STAMP_NAME = ".jaxcache-atimes"
"""Holds the folder's ctime (ns) when every entry last had an ``-atime``."""
# A folder changed this recently may change again within the same timestamp tick,
# unseen by a ctime comparison: it is not stamped (coarse clocks tick in 1-10 ms; NFS in 1 s).
_SETTLE_NS = 2 * 10**9


def create_atime(cache_path: Path) -> bool:
    """Gives one ``-cache`` file its ``-atime`` (its write time); False if it already had one.

    Created with mode 0o666 less the umask, as JAX creates its own: in a team
    cache the group must be able to rewrite it on every hit.
    """
    parsed = jaxformat.parse_entry_name(cache_path.name)
    if parsed is None or parsed.kind != "cache":
        raise ValueError(f"{cache_path.name} is not a cache entry")
    written_ns = cache_path.stat(follow_symlinks=False).st_mtime_ns
    try:
        fd = os.open(cache_path.parent / jaxformat.atime_file_name(parsed.key),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(jaxformat.encode_atime(written_ns))
    return True


def _missing(folder: Path) -> list[Path]:
    names = set(os.listdir(folder))
    out = []
    for name in names:
        parsed = jaxformat.parse_entry_name(name)
        if parsed is not None and parsed.kind == "cache" and jaxformat.atime_file_name(parsed.key) not in names:
            out.append(folder / name)
    return out


def ensure_atimes(folder: Path) -> int:
    """Creates the missing ``-atime`` files of ``folder``; returns how many.

    Cheap when nothing changed: the folder's ctime, which moves whenever an
    entry is added or removed and which no tool can set back (unlike the
    mtime that ``tar`` and ``rsync -a`` restore), is compared with the stamp
    of the last complete pass. Otherwise the folder is listed, and JAX's lock
    is taken only if an entry lacks its ``-atime``. Best effort: a folder
    that cannot be locked or written is left as it is (``jaxcache check``
    reports what is missing).
    """
    from jaxcache.errors import CacheDirError
    from jaxcache.locking import folder_lock

    stamp = folder / STAMP_NAME
    try:
        before_ns = os.stat(folder).st_ctime_ns
        if stamp.read_text().strip() == str(before_ns):
            return 0
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return 0
    created = 0
    try:
        if _missing(folder):
            with folder_lock(folder, timeout=10.0):
                for path in _missing(folder):
                    if path.is_symlink() or not path.is_file():
                        continue
                    try:
                        created += create_atime(path)
                    except FileNotFoundError:
                        continue  # deleted meanwhile by a process that does not lock (JAX uncapped)
            return created  # the next call, finding nothing to do, stamps
        # Stamped only if nothing changed while we looked, and not too recently to tell.
        if os.stat(folder).st_ctime_ns == before_ns and time.time_ns() - before_ns > _SETTLE_NS:
            fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "w") as f:
                f.write(str(before_ns))
    except (CacheDirError, OSError):
        return created
    return created
