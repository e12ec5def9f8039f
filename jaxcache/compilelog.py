"""Seeing JAX's persistent-cache hits, misses and writes, per module, from its log records.

JAX logs each hit, miss and write, with the module name and key, at DEBUG
(the loggers and messages are in `jaxcache.jaxinternals`); jaxcache's own
executable store logs a load as a hit the same way::

    jaxcache.executables        "Executable store hit for '%s' with key %r"                  (module, key)

A kernel loaded from the store was never even looked up in JAX's cache, and counts as a hit.

Observing must not change what JAX logs to anyone else. So a *tap* leaves
every logger's level, handlers and filters alone: it gives the three loggers
a subclass of their own class that creates DEBUG records even when nothing
would show them, passes each record to the listeners, and then handles it
exactly as the logger without the tap would (by the level in force at that
moment: ``jax_debug_log_modules``, ``assertLogs`` and a user's ``setLevel``
keep working, before or after the tap). And it checks itself: each record
precedes, in the same thread, a `jax.monitoring` event (`jaxinternals.HIT_EVENT`,
`jaxinternals.WRITE_EVENT`), so fewer records than events means JAX changed
its records, and counting is said to be off (one warning) instead of silently wrong.

This module uses only the standard library: the ``jaxcache run`` bootstrap
loads it by path into children whose Python may not have jaxcache installed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

if __name__.startswith("_jaxcache_bootstrap_"):  # loaded by path, with its siblings, by `jaxcache run`'s bootstrap
    importhook = sys.modules["_jaxcache_bootstrap_importhook"]
    jaxinternals = sys.modules["_jaxcache_bootstrap_jaxinternals"]
else:
    from jaxcache import importhook, jaxinternals

COMPILER_LOGGER = jaxinternals.COMPILER_LOGGER
CACHE_LOGGER = jaxinternals.CACHE_LOGGER
STORE_LOGGER = "jaxcache.executables"
STORE_HIT_PREFIX = "Executable store hit for"

HIT = jaxinternals.HIT
MISS = jaxinternals.MISS
WRITE = jaxinternals.WRITE
COMPILE_TIME = jaxinternals.COMPILE_TIME

Listener = Callable[[str, str, "str | float"], None]  # (kind, module, key or seconds)


def classify(record: logging.LogRecord) -> tuple[str, str, str | float] | None:
    """(kind, module, key-or-seconds) for JAX's cache records and the store's hits, else None."""
    if record.name == STORE_LOGGER:
        msg, args = record.msg, record.args
        if isinstance(msg, str) and msg.startswith(STORE_HIT_PREFIX) and isinstance(args, tuple) and len(args) == 2:
            return HIT, str(args[0]), str(args[1])
        return None
    return jaxinternals.classify(record)


# A file's mtime may trail the clock that stamped the write's record by this much (coarse timestamps).
_CLOCK_SLACK_SECS = 1.0


def _written_since(path: str, since: float) -> bool:
    """Whether ``path`` is a non-empty file written at ``since`` or later.

    A full disk leaves JAX's plain write_bytes an empty file (jaxcache's atomic writes, none);
    and JAX logs a write even when the key is there already, broken (it never replaces an entry).
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size > 0 and st.st_mtime >= since - _CLOCK_SLACK_SECS


def jax_cache_folder() -> str | None:
    """The folder JAX writes entries to, if JAX is imported and has one (never imports JAX)."""
    jax = sys.modules.get("jax")
    folder = getattr(getattr(jax, "config", None), "jax_compilation_cache_dir", None) if jax else None
    return folder or os.environ.get("JAX_COMPILATION_CACHE_DIR") or None


# The tap's state lives on the compiler logger, so that the copies of this module a
# process may hold (the bootstrap's, loaded by path, and jaxcache's) share one tap.
_STATE_ATTR = "_jaxcache_tap"


RecordListener = Callable[[logging.LogRecord], None]


class _TapState:
    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.record_listeners: dict[str, list[RecordListener]] = {}  # by logger name: every record, raw
        self.records: Counter[str] = Counter()  # JAX's records seen, by kind
        self.events: Counter[str] = Counter()  # JAX's monitoring events seen, by kind
        self.watching = False
        self.broken: set[int] = set()  # ids of listeners that raised (said once each)
        self.lock = threading.Lock()  # compiles in several threads: no count may be lost


def _observe(state: Any, record: logging.LogRecord) -> None:
    for listener in list(getattr(state, "record_listeners", {}).get(record.name, ())):
        try:
            listener(record)
        except Exception as err:  # noqa: BLE001 (a listener must never break a compile; said once)
            if id(listener) not in state.broken:
                state.broken.add(id(listener))
                warnings.warn(f"jaxcache: a compile-log listener failed ({type(err).__name__}: {err}); "
                              "what it records is incomplete", RuntimeWarning, stacklevel=2)
    event = classify(record)
    if event is None:
        return
    if record.name != STORE_LOGGER:
        with state.lock:
            state.records[event[0]] += 1
    for listener in list(state.listeners):
        try:
            listener(*event)
        except Exception as err:  # noqa: BLE001 (a listener must never break a compile; said once)
            if id(listener) not in state.broken:
                state.broken.add(id(listener))
                warnings.warn(f"jaxcache: a compile-log listener failed ({type(err).__name__}: {err}); "
                              "its counts are incomplete", RuntimeWarning, stacklevel=2)


def _tap(logger: logging.Logger, state: Any) -> None:
    if getattr(logger, _STATE_ATTR, None) is state:
        return
    base = type(logger)

    class Tapped(base):  # type: ignore[valid-type,misc]
        def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
            return level >= logging.DEBUG or base.isEnabledFor(self, level)

        def handle(self, record: logging.LogRecord) -> None:
            _observe(getattr(self, _STATE_ATTR), record)
            if base.isEnabledFor(self, record.levelno):  # what this logger does without the tap
                base.handle(self, record)

    Tapped.__name__ = Tapped.__qualname__ = f"JaxcacheTapped{base.__name__}"
    setattr(logger, _STATE_ATTR, state)
    logger.__class__ = Tapped


def _state() -> Any:
    home = logging.getLogger(COMPILER_LOGGER)
    state = getattr(home, _STATE_ATTR, None)
    if state is None:
        state = _TapState()
    for name in (COMPILER_LOGGER, CACHE_LOGGER, STORE_LOGGER):
        _tap(logging.getLogger(name), state)
    if not state.watching:
        state.watching = True
        importhook.when_imported("jax", lambda _: jaxinternals.on_jax_event(lambda event: _check(state, event)))
    return state


def _check(state: Any, event: str) -> None:
    """At each JAX event, the record that precedes it must have been seen."""
    if event not in (jaxinternals.HIT_EVENT, jaxinternals.WRITE_EVENT):
        return
    with state.lock:
        kind = HIT if event == jaxinternals.HIT_EVENT else WRITE
        state.events[kind] += 1
        missing = [what for what, behind in (
            (kind, state.records[kind] < state.events[kind]),
            (MISS, kind == WRITE and state.records[MISS] < state.events[WRITE])) if behind]
    for what in missing:
        jaxinternals.feature_off(_COUNTING[what], f"JAX {_EVENT_SAYS[what]} without the log record jaxcache reads")


_COUNTING = {HIT: "counting persistent-cache hits per module", MISS: "counting persistent-cache misses per module",
             WRITE: "counting and recording the entries JAX writes"}
_EVENT_SAYS = {HIT: "reported a hit", MISS: "wrote an entry (after a miss)", WRITE: "wrote an entry"}


def listen_records(logger_name: str, listener: RecordListener) -> Callable[[], None]:
    """Calls ``listener(record)`` for every record of that logger, DEBUG included, without
    changing what the logger shows anyone else; returns an undo."""
    state = _state()
    if not hasattr(state, "record_listeners"):  # a tap made by an older copy of this module
        state.record_listeners = {}
    _tap(logging.getLogger(logger_name), state)
    state.record_listeners.setdefault(logger_name, []).append(listener)

    def remove() -> None:
        if listener in state.record_listeners.get(logger_name, []):
            state.record_listeners[logger_name].remove(listener)

    return remove


def listen(listener: Listener) -> Callable[[], None]:
    """Calls ``listener(kind, module, key_or_seconds)`` for each record; returns an undo."""
    state = _state()
    state.listeners.append(listener)

    def remove() -> None:
        if listener in state.listeners:
            state.listeners.remove(listener)

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
    disk, a read-only folder) is only a warning, while one whose key is there
    already (broken: JAX could not read it) writes nothing; so a write is
    counted once its ``-cache`` file is seen, not empty and written since the
    record, in the cache folder (``folder``, else the one JAX is configured
    with), when the counts are read.
    """

    modules: dict[str, ModuleCounts] = field(default_factory=dict)
    hit_keys: list[str] = field(default_factory=list)
    folder: str | None = None
    _pending_writes: list[tuple[str, str, float]] = field(default_factory=list)
    _remove: Callable[[], None] | None = None

    def __call__(self, kind: str, module: str, value: str | float) -> None:
        self.observe(kind, module, value)

    def observe(self, kind: str, module: str, value: str | float, at: float | None = None) -> None:
        """Counts one event; ``at`` is when it happened (now, unless replayed from a record)."""
        counts = self.modules.setdefault(module, ModuleCounts())
        if kind == HIT:
            counts.requests += 1
            counts.hits += 1
            self.hit_keys.append(str(value))
        elif kind == MISS:
            counts.requests += 1
            counts.misses += 1
        elif kind == WRITE:
            self._pending_writes.append((module, str(value), time.time() if at is None else at))
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
        for module, key, at in self._pending_writes:
            # In a bucket a write is one PUT, whole or failed with JAX's warning: not stat-ed back.
            if folder is None or "://" in folder or _written_since(os.path.join(folder, key + "-cache"), at):
                self.modules[module].writes += 1
            else:
                still_pending.append((module, key, at))  # failed, not needed, or still being written
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
