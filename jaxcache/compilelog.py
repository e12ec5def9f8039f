"""Seeing JAX's persistent-cache hits, misses and writes, per module, from its log records.

JAX logs, with ``record.args`` as shown (``jax/_src/compiler.py``,
``jax/_src/compilation_cache.py``)::

    jax._src.compiler           "Persistent compilation cache hit for '%s' with key %r"      (module, key)
    jax._src.compiler           "PERSISTENT COMPILATION CACHE MISS for '%s' with key %r"     (module, key)
    jax._src.compiler           "'%s' took at least %.2f seconds to compile (%.2fs)"          (module, min, secs)
    jax._src.compilation_cache  "Writing %s to persistent compilation cache with key %r"     (module, key)
    jaxcache.executables        "Executable store hit for '%s' with key %r"                  (module, key)

The last is jaxcache's own executable store (`jaxcache.executables`): a
kernel loaded from it was never even looked up in JAX's cache, and counts as
a hit.

They are DEBUG records, so a *tap* lowers those two loggers to DEBUG and
then drops, after its listeners have seen them, every record below the level
the logger had before: the user's own logging sees nothing new.

This module uses only the standard library: the ``jaxcache run`` bootstrap
loads it by path into children whose Python may not have jaxcache installed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

COMPILER_LOGGER = "jax._src.compiler"
CACHE_LOGGER = "jax._src.compilation_cache"
STORE_LOGGER = "jaxcache.executables"

HIT = "hit"
MISS = "miss"
WRITE = "write"
COMPILE_TIME = "compile_time"

Listener = Callable[[str, str, "str | float"], None]  # (kind, module, key or seconds)


def classify(record: logging.LogRecord) -> tuple[str, str, str | float] | None:
    """(kind, module, key-or-seconds) for the records above, else None."""
    msg = record.msg
    args = record.args
    if not isinstance(msg, str) or not isinstance(args, tuple) or not args:
        return None
    if (msg.startswith("Persistent compilation cache hit for") or msg.startswith("Executable store hit for")) and len(args) == 2:
        return HIT, str(args[0]), str(args[1])
    if msg.startswith("PERSISTENT COMPILATION CACHE MISS for") and len(args) == 2:
        return MISS, str(args[0]), str(args[1])
    if msg.startswith("Writing ") and "persistent compilation cache" in msg and len(args) == 2:
        return WRITE, str(args[0]), str(args[1])
    if "seconds to compile" in msg and len(args) == 3:
        return COMPILE_TIME, str(args[0]), float(args[2])
    return None


def _nonempty(path: str) -> bool:
    # A full disk leaves JAX's plain write_bytes an empty file (jaxcache's atomic writes, none).
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def jax_cache_folder() -> str | None:
    """The folder JAX writes entries to, if JAX is imported and has one (never imports JAX)."""
    jax = sys.modules.get("jax")
    folder = getattr(getattr(jax, "config", None), "jax_compilation_cache_dir", None) if jax else None
    return folder or os.environ.get("JAX_COMPILATION_CACHE_DIR") or None


class _Tap(logging.Filter):
    def __init__(self, passthrough_level: int) -> None:
        super().__init__()
        self.passthrough_level = passthrough_level
        self.listeners: list[Listener] = []

    def filter(self, record: logging.LogRecord) -> bool:
        event = classify(record)
        if event is not None:
            for listener in list(self.listeners):
                try:
                    listener(*event)
                except Exception:  # a listener must never break a compile
                    pass
        return record.levelno >= self.passthrough_level


def _tap_for(name: str) -> _Tap:
    logger = logging.getLogger(name)
    for existing in logger.filters:
        if type(existing).__name__ == "_Tap" and hasattr(existing, "listeners"):
            return existing  # type: ignore[return-value]
    tap = _Tap(logger.getEffectiveLevel())
    logger.addFilter(tap)
    if logger.getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.DEBUG)
    return tap


def listen(listener: Listener) -> Callable[[], None]:
    """Calls ``listener(kind, module, key_or_seconds)`` for each record; returns an undo."""
    taps = [_tap_for(COMPILER_LOGGER), _tap_for(CACHE_LOGGER), _tap_for(STORE_LOGGER)]
    for tap in taps:
        tap.listeners.append(listener)

    def remove() -> None:
        for tap in taps:
            if listener in tap.listeners:
                tap.listeners.remove(listener)

    return remove


@dataclass
class ModuleCounts:
    """One module's persistent-cache traffic."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    writes: int = 0
    compile_seconds: float = 0.0


@dataclass
class CompileLog:
    """Counts per module name; start with :meth:`start`, stop with :meth:`stop`.

    JAX logs a write before it makes it, and a write that then fails (a full
    disk, a read-only folder) is only a warning; so a write is counted once its
    ``-cache`` file is seen, not empty, in the cache folder (``folder``, else the
    one JAX is configured with), when the counts are read.
    """

    modules: dict[str, ModuleCounts] = field(default_factory=dict)
    hit_keys: list[str] = field(default_factory=list)
    folder: str | None = None
    _pending_writes: list[tuple[str, str]] = field(default_factory=list)
    _remove: Callable[[], None] | None = None

    def __call__(self, kind: str, module: str, value: str | float) -> None:
        counts = self.modules.setdefault(module, ModuleCounts())
        if kind == HIT:
            counts.requests += 1
            counts.hits += 1
            self.hit_keys.append(str(value))
        elif kind == MISS:
            counts.requests += 1
            counts.misses += 1
        elif kind == WRITE:
            self._pending_writes.append((module, str(value)))
        elif kind == COMPILE_TIME:
            counts.compile_seconds += float(value)

    def start(self) -> CompileLog:
        if self._remove is None:
            self._remove = listen(self)
        return self

    def stop(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    def _confirm_writes(self) -> None:
        folder = self.folder or jax_cache_folder()
        still_pending = []
        for module, key in self._pending_writes:
            if folder is None or _nonempty(os.path.join(folder, key + "-cache")):
                self.modules[module].writes += 1
            else:
                still_pending.append((module, key))  # failed, or still being written
        self._pending_writes = still_pending

    def snapshot(self) -> dict[str, dict[str, float]]:
        self._confirm_writes()
        return {m: asdict(c) for m, c in self.modules.items()}

    def to_json(self) -> str:
        return json.dumps({"modules": self.snapshot(), "hit_keys": self.hit_keys})

    @property
    def writes(self) -> int:
        self._confirm_writes()
        return sum(c.writes for c in self.modules.values())

    @property
    def hits(self) -> int:
        return sum(c.hits for c in self.modules.values())

    @property
    def misses(self) -> int:
        return sum(c.misses for c in self.modules.values())
