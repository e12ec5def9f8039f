"""JAX's own ``.lockfile``, taken around every change jaxcache makes to a folder.

JAX holds it for each get/put of a size-capped cache (``jax/_src/lru_cache.py``),
so deleting under it never races JAX's eviction or its write of an entry and
its ``-atime``. Work is done in batches so JAX writers wait at most one batch.
That JAX's lock is a `filelock.FileLock` on this same file, which this lock
excludes, is pinned by ``tests/test_jaxinternals.py``.
"""

from __future__ import annotations

import errno
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from jaxcache import jaxformat
from jaxcache.errors import CacheDirError

# JAX waits up to 10 s for the lock; jaxcache is willing to wait longer.
LOCK_TIMEOUT_SECS = 60.0
BATCH_SIZE = 256
# A filesystem that has no flock at all: an NFS mount without its lock manager (ENOLCK),
# or one that does not implement it (EOPNOTSUPP). (ENOSYS is handled by filelock itself.)
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})
_warned: set[str] = set()


@contextmanager
def folder_lock(folder: Path, *, timeout: float = LOCK_TIMEOUT_SECS) -> Iterator[None]:
    """Holds the ``.lockfile`` of one cache folder.

    Raises:
        CacheDirError: the lock cannot be created (read-only folder) or taken in time.
    """
    lock = filelock.FileLock(str(folder / jaxformat.LOCKFILE_NAME), timeout=timeout)
    no_locks = None  # why this filesystem takes no lock at all, if it takes none
    try:
        lock.acquire()
    except filelock.Timeout:
        raise CacheDirError(f"timed out after {timeout:.0f}s waiting for {folder / jaxformat.LOCKFILE_NAME}") from None
    except PermissionError:
        raise CacheDirError(f"permission denied: cannot lock {folder} (is it read-only?)") from None
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise CacheDirError(f"cannot lock {folder}: {e.strerror}") from None
        no_locks = e.strerror
    except NotImplementedError:  # older filelock's answer to ENOSYS
        no_locks = "flock is not implemented"
    if no_locks is None:
        try:
            yield
        finally:
            lock.release()
        return
    # JAX can take no lock here either: an uncapped cache (JAX locks nothing then) loses
    # nothing, since every file is proven again right before it changes; a capped one
    # cannot work on this filesystem at all (JAX's own reads and writes fail to lock).
    if str(folder) not in _warned:
        _warned.add(str(folder))
        warnings.warn(f"jaxcache: {folder} cannot be locked ({no_locks}: an NFS mount without its lock manager?); "
                      "going on without JAX's lock, safe where JAX uses the folder uncapped", stacklevel=3)
    yield
