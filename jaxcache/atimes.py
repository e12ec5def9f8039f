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
from pathlib import Path

from jaxcache import jaxformat

__all__ = ["create_atime", "ensure_atimes"]

STAMP_NAME = ".jaxcache-atimes"
"""Its mtime is the folder's mtime when every entry last had an ``-atime``."""


def create_atime(cache_path: Path) -> bool:
    """Gives one ``-cache`` file its ``-atime`` (its write time); False if it already had one."""
    parsed = jaxformat.parse_entry_name(cache_path.name)
    if parsed is None or parsed.kind != "cache":
        raise ValueError(f"{cache_path.name} is not a cache entry")
    written_ns = cache_path.stat(follow_symlinks=False).st_mtime_ns
    try:
        fd = os.open(cache_path.parent / jaxformat.atime_file_name(parsed.key),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(jaxformat.encode_atime(written_ns))
    return True


def ensure_atimes(folder: Path) -> int:
    """Creates the missing ``-atime`` files of ``folder``; returns how many.

    Cheap when nothing changed: the folder is listed only if its mtime moved
    since the last complete pass (any entry added or removed moves it).
    Best effort: a folder that cannot be locked or written is left as it is
    (``jaxcache check`` reports what is missing).
    """
    from jaxcache.errors import CacheDirError
    from jaxcache.locking import folder_lock

    stamp = folder / STAMP_NAME
    try:
        seen_ns = os.stat(folder).st_mtime_ns
        if os.stat(stamp).st_mtime_ns >= seen_ns:
            return 0
    except FileNotFoundError:
        pass
    except OSError:
        return 0
    created = 0
    try:
        with folder_lock(folder, timeout=10.0):
            seen_ns = os.stat(folder).st_mtime_ns  # before listing: a later change moves it past the stamp
            names = set(os.listdir(folder))
            for name in names:
                parsed = jaxformat.parse_entry_name(name)
                if parsed is None or parsed.kind != "cache" or jaxformat.atime_file_name(parsed.key) in names:
                    continue
                path = folder / name
                if path.is_symlink() or not path.is_file():
                    continue
                try:
                    created += create_atime(path)
                except FileNotFoundError:
                    continue  # deleted meanwhile by a process that does not lock (JAX uncapped)
            stamp.touch()
            os.utime(stamp, ns=(seen_ns, seen_ns))
    except (CacheDirError, OSError):
        return created
    return created
