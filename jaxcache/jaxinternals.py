"""Every use jaxcache makes of JAX beyond its public API, in one place.

`jaxcache.jaxformat` holds what JAX writes to disk; this module holds what
jaxcache reads or changes inside a running JAX, each with the JAX source it
relies on (``jax/_src/...``, the same files from jax 0.6.1 to 0.12.0.1):

| touchpoint | JAX source | jaxcache feature |
|---|---|---|
| `install_atomic_put`: replaces ``LRUCache.put`` | ``lru_cache.py`` | atomic entry writes |
| `cache_state`, `reset_cache`: the opened cache | ``compilation_cache.py`` | ``configure()`` after a first compile; the store's fresh compiles |
| `classify`: logger names and messages | ``compiler.py``, ``compilation_cache.py`` | hits/misses/writes per module |
| `HIT_EVENT`, `REQUEST_EVENT`, `WRITE_EVENT` | ``compiler.py``, ``compilation_cache.py`` | checking that the records are still read |
| `writing_platform`: the writer's frame | ``compilation_cache.put_executable_and_time`` | the platform in the write log |
| `trace_context` | ``config.py`` | the executable store's key |
| `compile_config`: config the compiler reads | ``compiler.get_compile_options`` | the executable store's key |
| `serialize`, `deserialize` | ``jax.experimental.serialize_executable`` | the executable store |
| `initialize_lapack` | ``jaxlib/lapack.py`` | running a stored CPU executable |
| `MIN_ENTRY_SIZE_KEEPS_ALL` | ``compilation_cache.default_min_cache_entry_size`` | leaving JAX's threshold at its default |

``tests/test_jaxinternals.py`` pins each one against the installed JAX (run on
0.6.1, 0.10.2, 0.11.x and 0.12.0.1). At run time a touchpoint that is gone
turns its feature off with one `TouchpointWarning` naming the feature; it
never breaks the user's program, and never fails silently.

Standard library only at import (JAX is imported inside the functions): the
``jaxcache run`` bootstrap loads this file by path into processes that may
never import JAX.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__.startswith("_jaxcache_bootstrap_"):  # loaded by path, with its siblings, by `jaxcache run`'s bootstrap
    atomic = sys.modules["_jaxcache_bootstrap_atomic"]
    importhook = sys.modules["_jaxcache_bootstrap_importhook"]
    jaxformat = sys.modules["_jaxcache_bootstrap_jaxformat"]
else:
    from jaxcache import atomic, importhook, jaxformat

logger = logging.getLogger(__name__)


class TouchpointWarning(UserWarning):
    """A JAX internal jaxcache relies on is gone: the feature it serves is off."""


_OFF: set[str] = set()


def feature_off(feature: str, why: str) -> None:
    """Says once per process that ``feature`` is off, and why (a changed JAX internal)."""
    if feature in _OFF:
        return
    _OFF.add(feature)
    version = getattr(sys.modules.get("jax"), "__version__", "?")
    warnings.warn(f"jaxcache: {feature} is off with jax {version}: {why}", TouchpointWarning, stacklevel=3)


# --- Log records ------------------------------------------------------------------------
# jax/_src/compiler.py (log_persistent_cache_hit/miss, _cache_write) and
# jax/_src/compilation_cache.py (put_executable_and_time), record.args as shown:
#   jax._src.compiler           "Persistent compilation cache hit for '%s' with key %r"   (module, key)
#   jax._src.compiler           "PERSISTENT COMPILATION CACHE MISS for '%s' with key %r"  (module, key)
#   jax._src.compiler           "'%s' took at least %.2f seconds to compile (%.2fs)"       (module, min, secs)
#   jax._src.compilation_cache  "Writing %s to persistent compilation cache with key %r"  (module, key)
COMPILER_LOGGER = "jax._src.compiler"
CACHE_LOGGER = "jax._src.compilation_cache"
HIT_PREFIX = "Persistent compilation cache hit for"
MISS_PREFIX = "PERSISTENT COMPILATION CACHE MISS for"
WRITE_MESSAGE = "Writing %s to persistent compilation cache with key %r"
COMPILE_TIME_MARK = "seconds to compile"

HIT = "hit"
MISS = "miss"
WRITE = "write"
COMPILE_TIME = "compile_time"


def classify(record: logging.LogRecord) -> tuple[str, str, str | float] | None:
    """(kind, module, key or seconds) for JAX's persistent-cache records, else None."""
    msg, args = record.msg, record.args
    if not isinstance(msg, str) or not isinstance(args, tuple) or not args:
        return None
    if msg.startswith(HIT_PREFIX) and len(args) == 2:
        return HIT, str(args[0]), str(args[1])
    if msg.startswith(MISS_PREFIX) and len(args) == 2:
        return MISS, str(args[0]), str(args[1])
    if msg == WRITE_MESSAGE and len(args) == 2:
        return WRITE, str(args[0]), str(args[1])
    if COMPILE_TIME_MARK in msg and len(args) == 3:
        return COMPILE_TIME, str(args[0]), float(args[2])
    return None


# jax.monitoring events (public API; the names are JAX's). Each follows, in the same
# thread, the record above it: a hit's record precedes HIT_EVENT, a write's (and its
# miss's) precede WRITE_EVENT, so fewer records than events means the records changed.
REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
HIT_EVENT = "/jax/compilation_cache/cache_hits"
WRITE_EVENT = "/jax/compilation_cache/cache_misses"  # recorded only when an entry is written


def on_jax_event(callback: Callable[[str], None]) -> None:
    """Calls ``callback(event)`` for every jax.monitoring event (JAX must be imported)."""
    import jax.monitoring

    jax.monitoring.register_event_listener(lambda event, **_: callback(event))


# --- The parts of a key (jax/_src/cache_key.py) and the traced arguments (pxla.py) -------
# At DEBUG, cache_key.get logs each part's own hash and the key so far, in this order, and
# each XLA flag it includes; pxla logs the arguments' avals when it lowers a computation:
#   jax._src.cache_key          "get_cache_key hash of serialized %s: %s"       (part, hex of that part alone)
#   jax._src.cache_key          "get_cache_key hash after serializing %s: %s"   (part, hex of the key so far)
#   jax._src.cache_key          "Including XLA flag in cache key: %s"            (flag)
#   jax._src.interpreters.pxla  "Compiling %s with global shapes and types %s. Argument mapping: %s."
#                                                                               (module, avals, shardings)
# The key's hex is the running hash after the last part. Logging the parts makes JAX hash
# each part twice, so these loggers are tapped only where key parts are recorded.
CACHE_KEY_LOGGER = "jax._src.cache_key"
LOWERING_LOGGER = "jax._src.interpreters.pxla"
KEY_PARTS = ("computation", "jax_lib version", "backend version", "XLA flags", "compile_options",
             "accelerator_config", "compression", "custom_hook")
_PART_MESSAGE = "get_cache_key hash of serialized %s: %s"
_TOTAL_MESSAGE = "get_cache_key hash after serializing %s: %s"
_FLAG_MESSAGE = "Including XLA flag in cache key: %s"
_LOWERING_PREFIX = "Compiling %s with global shapes and types %s."


def classify_key_record(record: logging.LogRecord) -> tuple[str, str, str] | None:
    """``("part", name, hex)``, ``("total", name, hex)``, ``("flag", flag, "")`` or
    ``("lowering", module, avals)`` for the records above, else None."""
    msg, args = record.msg, record.args
    if not isinstance(msg, str) or not isinstance(args, tuple) or not args:
        return None
    if msg == _PART_MESSAGE and len(args) == 2:
        return "part", str(args[0]), str(args[1])
    if msg == _TOTAL_MESSAGE and len(args) == 2:
        return "total", str(args[0]), str(args[1])
    if msg == _FLAG_MESSAGE and len(args) == 1:
        return "flag", str(args[0]), ""
    if msg.startswith(_LOWERING_PREFIX) and len(args) >= 2:
        avals = args[1]
        shown = [getattr(a, "str_short", lambda a=a: str(a))() for a in avals] if isinstance(avals, (list, tuple)) \
            else [str(avals)]
        return "lowering", str(args[0]), "(" + ", ".join(shown) + ")"
    return None


COMPILE_FUNCTION = "compile_or_get_cached"  # compiler.py; its ``backend`` argument, at a miss


def compiling_backend() -> Any | None:
    """The backend JAX is compiling for (or writing an entry of), from the compiler's frame.

    Call it from inside JAX's miss or write log call. None when the frame is not there.
    """
    frame = sys._getframe(1)
    for _ in range(40):
        if frame is None:
            break
        if frame.f_code.co_name in (COMPILE_FUNCTION, WRITER_FUNCTION):
            backend = frame.f_locals.get("backend")
            if isinstance(getattr(backend, "platform", None), str):
                return backend
        frame = frame.f_back
    return None


# --- The platform of the executable being written -------------------------------------
WRITER_FUNCTION = "put_executable_and_time"  # compilation_cache.py; its ``backend`` argument


def writing_platform() -> str | None:
    """The platform of the backend whose executable JAX is writing, from the writer's frame.

    Call it from inside JAX's "Writing ..." log call. None (after one warning)
    when the frame is not there: the caller must not guess.
    """
    frame = sys._getframe(1)
    for _ in range(40):
        if frame is None:
            break
        if frame.f_code.co_name == WRITER_FUNCTION:
            platform = getattr(frame.f_locals.get("backend"), "platform", None)
            if isinstance(platform, str) and platform:
                return platform
            break
        frame = frame.f_back
    feature_off("recording the platform of each entry written",
                f"no {WRITER_FUNCTION}(backend=...) frame above JAX's write record")
    return None


# --- The opened cache (jax/_src/compilation_cache.py) ---------------------------------
@dataclass(frozen=True)
class CacheState:
    """What JAX's compilation_cache module has decided so far in this process.

    Attributes:
        opened: the folder JAX opened its cache at (``_cache._path``), or None.
        checked: whether JAX already decided, at a compile, whether to use the cache.
    """

    opened: str | None
    checked: bool


def cache_state() -> CacheState | None:
    """JAX's persistent-cache state; None (after one warning) where it cannot be read."""
    try:
        from jax._src import compilation_cache as cc

        cache = cc._cache
        opened = str(cache._path) if cc._cache_initialized and cache is not None else None
        return CacheState(opened=opened, checked=bool(cc._cache_checked))
    except (ImportError, AttributeError) as err:
        feature_off("noticing configure() called after JAX opened its cache", f"{type(err).__name__}: {err}")
        return None


def reset_cache() -> bool:
    """Makes JAX decide afresh, at its next compile, whether and where to use its cache."""
    try:
        from jax._src import compilation_cache as cc

        cc.reset_cache()
        return True
    except (ImportError, AttributeError) as err:
        feature_off("re-opening JAX's cache", f"compilation_cache.reset_cache: {type(err).__name__}: {err}")
        return False


def compile_outside_cache(lower: Callable[[], Any]) -> Any:
    """A fresh XLA compile of ``lower()``: JAX's in-memory caches cleared (they would hand
    back the same executable) and its persistent cache off for this one compile."""
    import jax

    was = jax.config.jax_enable_compilation_cache
    jax.clear_caches()
    jax.config.update("jax_enable_compilation_cache", False)
    reset_cache()  # JAX decides once per process whether the cache is used
    try:
        return lower().compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", was)
        reset_cache()


MIN_ENTRY_SIZE_KEEPS_ALL = 0
"""``jax_persistent_cache_min_entry_size_bytes`` that keeps every entry while being JAX's own
default: JAX replaces 0 by ``default_min_cache_entry_size()``, which is 0 from 0.6.1 to 0.12.
jaxcache sets this rather than -1, so test suites that check JAX's global config stay green."""


# --- Atomic entry writes (jax/_src/lru_cache.py, LRUCache.put) ------------------------
def local_folder(path: Any) -> Path | None:
    """The cache's folder as a local `Path`, or None for a remote one.

    JAX builds it with ``jax._src.path.Path``: `pathlib.Path`, or, when
    ``etils[epath]`` is importable, an ``epath`` path (``PosixGPath`` even for
    local folders), which is not a `pathlib.Path`.
    """
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        return None
    return Path(text)


def install_atomic_put() -> bool:
    """Makes JAX write each entry (and, in a capped cache, its ``-atime``) atomically.

    ``LRUCache.put`` writes with a plain ``write_bytes``: a reader can see half
    an entry, and a crash leaves a truncated one JAX never replaces; in a
    capped cache, a crash between the entry and its ``-atime`` also breaks
    every later write before jax 0.11.2 (jax#39880). The replacement does what
    JAX's put does, in the same order and under the same lock, but writes the
    ``-atime`` and then the entry each through a temporary file renamed into
    place (`jaxcache.atomic`): a crash leaves temporary files (provably its
    own, see `jaxcache.atomic.writer_is_gone`) and at worst an ``-atime``
    without its entry, never an entry without its ``-atime`` or half an entry.
    Remote folders keep JAX's own put.

    Returns:
        Whether the replacement is in place (False, after one warning, where JAX's put changed).
    """
    try:
        from jax._src import lru_cache

        cls = lru_cache.LRUCache
        original = cls.put
        evict = cls._evict_if_needed
    except (ImportError, AttributeError) as err:
        feature_off("atomic entry writes", f"jax._src.lru_cache.LRUCache.put: {type(err).__name__}: {err}")
        return False
    if getattr(original, "_jaxcache_atomic", False):
        return True
    del evict  # only checked: the replacement calls it by name, as JAX's put does

    def put(self: Any, key: str, value: bytes) -> None:
        try:
            capped = self.eviction_enabled
            folder = local_folder(self.path)
        except AttributeError as err:
            feature_off("atomic entry writes", f"LRUCache has no {err.name}")
            return original(self, key, value)
        if folder is None or (capped and len(value) > self.max_size):
            return original(self, key, value)  # remote; or too big: JAX warns and skips
        if not key:
            raise ValueError("key cannot be empty")
        cache_path = folder / jaxformat.cache_file_name(key)
        if capped:
            self.lock.acquire(timeout=self.lock_timeout_secs)
        try:
            if cache_path.exists():
                return
            if capped:
                self._evict_if_needed(additional_size=len(value))
            with atomic.temp_file(folder) as (entry, entry_tmp):
                entry.write(value)
                entry.flush()
                if capped:
                    # The -atime goes first: a crash between the two renames leaves an
                    # -atime JAX ignores, never an entry its eviction would choke on.
                    atomic.write_atomically(folder / jaxformat.atime_file_name(key),
                                            jaxformat.encode_atime(time.time_ns()))
                os.replace(entry_tmp, cache_path)
        finally:
            if capped:
                self.lock.release()

    put._jaxcache_atomic = True  # type: ignore[attr-defined]
    put.__doc__ = original.__doc__
    cls.put = put
    return True


def install_atomic_put_on_import() -> None:
    """`install_atomic_put` as soon as JAX imports its cache module (at once if it has): for
    processes that must not import JAX themselves (``jaxcache run``'s children)."""
    importhook.when_imported("jax._src.lru_cache", lambda _: install_atomic_put())


# --- The executable store's key --------------------------------------------------------
def trace_context() -> Any | None:
    """What jit's own tracing cache keys on (x64, matmul precision, ...): ``config.trace_context()``.

    None (after one warning) where it is gone: the store is then off, since
    its key would not cover what decides the traced program.
    """
    try:
        from jax._src.config import trace_context as context
    except ImportError as err:
        feature_off("the executable store", f"jax._src.config.trace_context: {err}")
        return None
    return context()


COMPILE_CONFIG_NAMES = (
    "jax_optimization_level",
    "jax_memory_fitting_level",
    "jax_exec_time_optimization_effort",  # removed in jax 0.11.1
    "jax_memory_fitting_effort",  # removed in jax 0.11.1
    "jax_compiler_enable_remat_pass",
    "jax_xla_profile_version",
    "jax_use_shardy_partitioner",
    "jax_persistent_cache_enable_xla_caches",
    "jax_default_device",
)
"""Config options that change how XLA compiles but are not in `trace_context`: whichever of
them the installed JAX has go into the store's key. ``compiler.get_compile_options`` reads
all of them except the cache folder (the store lives inside it); the contract test checks
that it reads no other."""


def compile_config() -> list[tuple[str, str]]:
    """(name, repr of value) of each `COMPILE_CONFIG_NAMES` option this JAX has."""
    import jax

    out = []
    for name in COMPILE_CONFIG_NAMES:
        try:
            value = getattr(jax.config, name)
        except AttributeError:
            continue  # an option of another JAX version: nothing here to cover
        out.append((name, repr(value)))
    return out


def platform_version(device: Any) -> str:
    """The backend's platform version string (the runtime's build), part of JAX's own key."""
    return str(device.client.platform_version)


# --- Whole executables (jax.experimental.serialize_executable) ------------------------
def serialize(compiled: Any) -> tuple[bytes, Any, Any]:
    """(payload, in_tree, out_tree) of a `jax.stages.Compiled`.

    Raises:
        Exception: whatever JAX raises for an executable it cannot serialize.
    """
    from jax.experimental import serialize_executable

    return serialize_executable.serialize(compiled)


def deserialize(payload: bytes, in_tree: Any, out_tree: Any, devices: list[Any]) -> Any:
    """The `jax.stages.Compiled` back, loaded onto ``devices`` (those it was compiled for)."""
    from jax.experimental import serialize_executable

    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree, execution_devices=devices)


def can_serialize() -> bool:
    """Whether this JAX can serialize executables (else, after one warning, the store is off)."""
    try:
        from jax.experimental import serialize_executable

        serialize_executable.serialize, serialize_executable.deserialize_and_load  # noqa: B018
    except (ImportError, AttributeError) as err:
        feature_off("the executable store", f"jax.experimental.serialize_executable: {err}")
        return False
    return True


# --- LAPACK (jaxlib/lapack.py) ---------------------------------------------------------
def initialize_lapack() -> None:
    """Registers LAPACK's kernels, which CPU executables call.

    JAX fills LAPACK's function table while lowering a linear-algebra op
    (``jaxlib.lapack.prepare_lapack_call`` calls ``_lapack.initialize()``);
    an executable loaded without any lowering would call through an empty
    table and crash the process. jaxlib reads the function pointers from
    ``scipy.linalg.cython_blas`` and ``cython_lapack``, loaded here without
    the rest of scipy.linalg (see `_load_lapack_tables`).
    """
    try:
        from jaxlib import lapack

        initialize = lapack._lapack.initialize
    except (ImportError, AttributeError) as err:
        feature_off("the executable store's CPU kernels with linear algebra",
                    f"jaxlib.lapack._lapack.initialize: {type(err).__name__}: {err}")
        raise RuntimeError("LAPACK cannot be initialized") from err
    _load_lapack_tables()
    initialize()


def _load_lapack_tables() -> None:
    """Loads the two modules LAPACK's initialization reads, without the rest of scipy.linalg.

    Importing them the usual way first runs ``scipy/linalg/__init__.py``, which
    imports most of scipy.linalg (and, via scipy's array-API layer,
    numpy.f2py): 0.1-0.3 s of a warm start, where the two extension modules
    alone load in 10 ms. They are loaded from scipy's own folder under their
    own names, so a later ``import scipy.linalg`` finds and reuses them. If
    anything about that fails, nothing is left behind and jaxlib imports them
    the usual way.
    """
    if "scipy.linalg" in sys.modules:
        return  # already paid for
    import importlib.machinery
    import importlib.util

    loaded: list[str] = []
    try:
        import scipy

        folder = os.path.join(os.path.dirname(scipy.__file__), "linalg")
        for name in ("cython_blas", "cython_lapack"):
            full = f"scipy.linalg.{name}"
            if full in sys.modules:
                continue
            spec = importlib.machinery.PathFinder.find_spec(full, [folder])
            if spec is None or spec.loader is None:
                raise ImportError(full)
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            loaded.append(full)
            spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 (any surprise: undo; jaxlib then imports them the usual way, slower)
        logger.debug("loading LAPACK's tables alone failed (%s); jaxlib imports scipy.linalg", err)
        for full in loaded:
            sys.modules.pop(full, None)
