"""Atomic entry writes for JAX's uncapped cache.

JAX writes an entry with a plain ``Path.write_bytes`` (``LRUCache.put`` in
``jax/_src/lru_cache.py``): another process can read it half-written (JAX warns
and recompiles), two processes writing the same key can interleave, and a
crash leaves a truncated entry that JAX never replaces. Several JAX processes
sharing a folder (pytest-xdist workers, job arrays) hit this (jax#22718).

:func:`install` makes ``put`` write to a temporary file in the same folder and
``os.replace`` it into place, which POSIX makes atomic: readers see the whole
entry or none. It only changes uncapped caches on local paths; a capped cache
already serializes every get and put under JAX's ``.lockfile``.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

TEMP_PREFIX = ".jaxcache-tmp-"


def install() -> bool:
    """Patches ``LRUCache.put`` once per process; returns whether it is in place."""
    try:
        from jax._src import lru_cache
    except ImportError:
        return False
    cls = lru_cache.LRUCache
    if getattr(cls.put, "_jaxcache_atomic", False):
        return True
    original = cls.put
    # mkstemp creates files 0o600; give entries the mode a plain write would (umask applied).
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask

    def put(self: Any, key: str, value: bytes) -> None:
        if getattr(self, "eviction_enabled", True) or not isinstance(self.path, pathlib.Path):
            return original(self, key, value)
        if not key:
            raise ValueError("key cannot be empty")
        cache_path = self.path / f"{key}-cache"
        if cache_path.exists():
            return
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            os.chmod(tmp, mode)
            os.replace(tmp, cache_path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise

    put._jaxcache_atomic = True  # type: ignore[attr-defined]
    put.__doc__ = original.__doc__
    cls.put = put
    return True
