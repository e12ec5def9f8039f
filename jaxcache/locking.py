"""JAX's own ``.lockfile``, taken around every change jaxcache makes to a folder.

JAX holds it for each get/put of a size-capped cache (``jax/_src/lru_cache.py``),
so deleting under it never races JAX's eviction or its write of an entry and
its ``-atime``. Work is done in batches so JAX writers wait at most one batch.
That JAX's lock is a `filelock.FileLock` on this same file, which this lock
excludes, is pinned by ``tests/test_jaxinternals.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from jaxcache import jaxformat
from jaxcache.errors import CacheDirError

# JAX waits up to 10 s for the lock; jaxcache is willing to wait longer.
LOCK_TIMEOUT_SECS = 60.0
BATCH_SIZE = 256


@contextmanager
def folder_lock(folder: Path, *, timeout: float = LOCK_TIMEOUT_SECS) -> Iterator[None]:
    """Holds the ``.lockfile`` of one cache folder.

    Raises:
        CacheDirError: the lock cannot be created (read-only folder) or taken in time.
    """
    lock = filelock.FileLock(str(folder / jaxformat.LOCKFILE_NAME), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise CacheDirError(f"timed out after {timeout:.0f}s waiting for {folder / jaxformat.LOCKFILE_NAME}") from None
    except PermissionError:
        raise CacheDirError(f"permission denied: cannot lock {folder} (is it read-only?)") from None
    except OSError as e:
        raise CacheDirError(f"cannot lock {folder}: {e.strerror}") from None
    try:
        yield
    finally:
        lock.release()
