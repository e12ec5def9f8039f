"""Whole compiled executables beside the persistent cache, so a warm start skips tracing too.

JAX's persistent cache keys an entry by the *lowered* program, so even with
every entry present a fresh process must trace and lower each function to find
it: 0.2-0.4 s per solver kernel, plus the "auto" chunk probes, against a few
milliseconds to load the executable (see ``JAX_CACHE_FACTS.md``). For kernels
whose code can be named without tracing it (the bundled solver's: a
module-level function in a package whose source is hashed), this store keeps
the `jax.stages.Compiled` itself (`jax.experimental.serialize_executable`),
keyed by what decides the program before tracing:

- the caller's *identity* of the kernel: function, source fingerprint, static arguments;
- the abstract arguments (tree structure, shapes, dtypes, weak types);
- the environment: Python, jax and jaxlib versions, the backend and its
  devices, every config value JAX's own tracing cache keys on
  (``trace_context``: x64, matmul precision, ...), and ``XLA_FLAGS``.

A miss compiles through the ordinary path (so the persistent cache is written
or hit as usual) and stores the result. A file that cannot be read or loaded
is treated as a miss and replaced.

On disk: ``<jax cache folder>/executables/<sha256>.jaxexe``, in the format
of `jaxcache.exeformat` (a JSON header jaxcache reads without unpickling, then
the payload). Loading a payload runs code from it, exactly as
loading a JAX cache entry runs the code in it: the store is as trusted as the
cache folder (see the README's security section).

This module imports JAX only inside the functions that need it.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import os
import pickle
import re
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxcache import atomic, importhook, jaxinternals
from jaxcache.exeformat import (
    FOLDER_NAME,
    SUFFIX,
    ExecutableFormatError,
    file_is_whole,
    read_header,
    split,
)
from jaxcache.exeformat import encode as encode_file

__all__ = [
    "ENV_SWITCH",
    "FOLDER_NAME",
    "STORE",
    "SolverStore",
    "abstract",
    "active_folder",
    "environment",
    "is_stored",
    "load",
    "load_or_compile",
    "memory_analysis",
    "memory_of",
    "plug_into_solver",
    "prepare_runtime",
    "stats",
    "store_key",
    "stored_here",
]

logger = logging.getLogger(__name__)

ENV_SWITCH = "JAXCACHE_EXECUTABLES"  # "0", "off", "false" or "no" turns the store off
_KEY_FORMAT = 2  # bump when what goes into a key changes (2: every compile option the installed JAX has)

# Per process: what each module name did, for `jaxcache verify` and tests.
_STATS: dict[str, Counter[str]] = {}


_SWITCH_OFF = frozenset({"0", "off", "false", "no"})


def active_folder() -> Path | None:
    """Where this process stores executables: ``executables`` in JAX's cache folder.

    None when the persistent cache is off, is not a local folder, or
    ``JAXCACHE_EXECUTABLES`` turns the store off.
    """
    if os.environ.get(ENV_SWITCH, "").strip().lower() in _SWITCH_OFF:
        return None
    import jax

    cache_dir = jax.config.jax_compilation_cache_dir
    if not cache_dir or "://" in str(cache_dir):
        return None
    if not jax.config.jax_enable_compilation_cache or not _can_serialize():
        return None
    return Path(cache_dir) / FOLDER_NAME


@functools.cache
def _can_serialize() -> bool:
    return jaxinternals.can_serialize()


def _describe(value: Any, depth: int = 0) -> str | None:
    """A description of a config value that is the same in every process, or None.

    Plain values describe themselves; objects whose repr carries an address
    (JAX's ``AxisEnv``) are described by their slots. Anything else is not
    trusted: the caller then does not use the store.
    """
    if depth > 8:
        return None
    if value is None or isinstance(value, (bool, int, float, str, bytes, enum.Enum)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        parts = [_describe(v, depth + 1) for v in value]
        return None if None in parts else "(" + ",".join(parts) + ")"  # type: ignore[arg-type]
    if isinstance(value, (frozenset, set)):
        parts = [_describe(v, depth + 1) for v in value]
        return None if None in parts else "{" + ",".join(sorted(parts)) + "}"  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        items = [(_describe(k, depth + 1), _describe(v, depth + 1)) for k, v in value.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "{" + ",".join(sorted(f"{k}:{v}" for k, v in items)) + "}"
    text = repr(value)
    if " at 0x" not in text:
        return text
    slots = getattr(type(value), "__slots__", None)
    if not slots:
        return None
    fields = [s for s in slots if not s.startswith("__")]
    parts = [_describe(getattr(value, s, None), depth + 1) for s in fields]
    if None in parts:
        return None
    return type(value).__qualname__ + "(" + ",".join(f"{s}={p}" for s, p in zip(fields, parts)) + ")"


def environment() -> str | None:
    """Everything outside the kernel and its arguments that decides the executable, or None."""
    import jax
    import jaxlib

    traced = jaxinternals.trace_context()
    if traced is None:
        return None
    context = _describe(traced)
    if context is None:
        jaxinternals.feature_off("the executable store", "jax's trace_context() holds a value with no "
                                 f"description that is the same in every process: {traced!r:.200}")
        return None
    devices = jax.devices()
    platform = devices[0].platform
    return json.dumps([
        _KEY_FORMAT, sys.version_info[:2], jax.__version__, jaxlib.__version__, platform,
        jaxinternals.platform_version(devices[0]), [(d.id, d.device_kind, d.process_index) for d in devices],
        jax.process_count(), context, os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", ""),
        _host_cpu() if platform == "cpu" else None,
        # Not in trace_context, but in JAX's own key: they change how XLA compiles.
        jaxinternals.compile_config(),
    ])


@functools.cache
def _host_cpu() -> str:
    """The host CPU's instruction-set features: XLA:CPU compiles for the host it runs on.

    A CPU executable from a machine with, say, AVX-512 may crash (SIGILL) on
    one without; JAX's own key does not tell them apart, so on a folder shared
    by different nodes each kind of CPU gets its own stored executables.
    """
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return hashlib.sha256(" ".join(sorted(line.split(":", 1)[1].split())).encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.machine() + "/" + platform.processor()


def abstract(args: Any) -> Any:
    """``args`` as `jax.ShapeDtypeStruct` leaves (no shardings, as ``jaxcache warm`` lowers them)."""
    import jax
    import numpy as np

    def spec(a: Any) -> Any:
        return jax.ShapeDtypeStruct(tuple(a.shape) if hasattr(a, "shape") else np.shape(a), a.dtype, weak_type=bool(getattr(a, "weak_type", False)))

    return jax.tree_util.tree_map(spec, args)


# A node type other than JAX's built-ins and namedtuples: its auxiliary data need not show in str(treedef).
_CUSTOM_NODE = re.compile(r"CustomNode\((?!namedtuple\[)")


def _arguments_key(specs: Any) -> str | None:
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(specs)
    structure = str(treedef)
    if _CUSTOM_NODE.search(structure):
        return None
    return repr((structure, [(tuple(s.shape), str(s.dtype), bool(s.weak_type)) for s in leaves]))


def store_key(identity: str, specs: Any, environment_key: str) -> str | None:
    """The store's key: a sha256 over the kernel's identity, its arguments and the environment.

    None when the arguments cannot be described exactly (a custom pytree node,
    whose auxiliary data its printed structure may not show): not stored.
    """
    arguments = _arguments_key(specs)
    if arguments is None:
        return None
    digest = hashlib.sha256()
    for part in (identity, arguments, environment_key):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _store_path(identity: str, specs: Any, folder: Path) -> Path | None:
    """Where this kernel would be stored in this environment; None when it cannot be."""
    env = environment()
    key = store_key(identity, specs, env) if env is not None else None
    return None if key is None else folder / (key + SUFFIX)


def stats() -> dict[str, dict[str, int]]:
    """Per module name, this process's store loads, stores and unusable files."""
    return {module: dict(counts) for module, counts in _STATS.items()}


def _count(module: str, what: str) -> None:
    _STATS.setdefault(module, Counter())[what] += 1


def load_or_compile(
    jitted: Any,
    specs: Any,
    static: Mapping[str, Any],
    *,
    identity: str,
    module: str,
    folder: Path,
    fresh: bool = False,
) -> tuple[Any, str]:
    """The compiled kernel: loaded from the store, else compiled (and stored when possible).

    An executable JAX loaded from its persistent cache cannot be serialized
    again (the result fails at run time with "Function ... not found", jax 0.6
    to 0.10 on CPU), so only one compiled in this process is stored. A run
    that finds the kernel in JAX's cache therefore just uses it; ``fresh``
    (what ``jaxcache warm`` asks for) compiles it once more, outside JAX's
    cache, to store it.

    Args:
        jitted: the `jax.jit` function; compiled as ``jitted.lower(*specs, **static).compile()``.
        specs: the abstract positional arguments (see `abstract`).
        static: static keyword arguments.
        identity: names the kernel's code and static arguments in a way that
            is the same in every process and changes whenever they do.
        module: the module name, for reports (``jit_lsq_iterate``).
        folder: the store (see `active_folder`).
        fresh: store the kernel even when JAX's cache has it.

    Returns:
        The `jax.stages.Compiled`, and ``"loaded"`` (from the store),
        ``"stored"`` (compiled here and stored) or ``"compiled"`` (not stored).
    """
    path = _store_path(identity, specs, folder)
    if path is None:
        return jitted.lower(*specs, **static).compile(), "compiled"
    key = path.name[: -len(SUFFIX)]
    compiled = load(specs, identity=identity, module=module, folder=folder)
    if compiled is not None:
        return compiled, "loaded"
    start = time.perf_counter()
    before = _jax_cache_events()
    compiled = jitted.lower(*specs, **static).compile()
    if not _compiled_by_xla(before, _jax_cache_events()):
        # From JAX's persistent cache, or the same executable again from its
        # in-memory caches: neither can be serialized safely.
        if not fresh:
            logger.debug("%s was not compiled here (JAX's cache had it); not stored", module)
            return compiled, "compiled"
        compiled = jaxinternals.compile_outside_cache(lambda: jitted.lower(*specs, **static))
    if _save(path, compiled, module, time.perf_counter() - start):
        _count(module, "stored")
        _STORED_HERE.add(path)
        logger.debug("Executable store write for '%s' with key %r", module, f"{module}-{key}")
        return compiled, "stored"
    return compiled, "compiled"


# Files this process wrote: `warm` reports a kernel compiled moments ago (an "auto"
# probe, built with its objective) as compiled, not as found in the cache.
_STORED_HERE: set[Path] = set()


def stored_here(specs: Any, *, identity: str, folder: Path) -> bool:
    """Whether this process itself stored this kernel."""
    return _store_path(identity, specs, folder) in _STORED_HERE


def is_stored(specs: Any, *, identity: str, folder: Path, verify: bool = False) -> bool:
    """Whether the store has this kernel for these arguments, whole (nothing loaded).

    The size is checked against the header; ``verify`` also checks the checksum (reads the file).
    """
    path = _store_path(identity, specs, folder)
    if path is None:
        return False
    try:
        return file_is_whole(path, read_header(path), verify_checksum=verify)
    except (OSError, ExecutableFormatError):
        return False


def load(specs: Any, *, identity: str, module: str, folder: Path, prepare: bool = True) -> Any | None:
    """The stored executable for this kernel and these abstract arguments, or None (see `load_or_compile`).

    ``prepare=False`` leaves `prepare_runtime` to the caller, who must call it
    before running what was loaded (loading in threads while the main thread prepares).
    """
    path = _store_path(identity, specs, folder)
    if path is None:
        return None
    key = path.name[: -len(SUFFIX)]
    compiled = _load(path, module)
    if compiled is not None and prepare:
        prepare_runtime()
    if compiled is not None:
        _count(module, "loaded")
        logger.debug("Executable store hit for '%s' with key %r", module, f"{module}-{key}")
    return compiled


_MEMORY_FIELDS = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                  "alias_size_in_bytes", "generated_code_size_in_bytes")


def memory_of(compiled: Any) -> dict[str, int] | None:
    """The compiler's memory analysis as a dict (None where the backend has none)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 (backends without the analysis raise)
        return None
    if stats is None:
        return None
    return {name: int(getattr(stats, name, 0)) for name in _MEMORY_FIELDS}


def memory_analysis(
    jitted: Any, specs: Any, static: Mapping[str, Any], *, identity: str, module: str, folder: Path
) -> dict[str, int] | None:
    """The kernel's memory analysis (see `memory_of`), read from a stored header when there is one.

    Reading the header costs microseconds where loading the executable costs
    up to a second for a large program: "auto" chunk sizing needs only these
    numbers from its probe kernels, never the probes themselves.
    """
    path = _store_path(identity, specs, folder)
    if path is not None:
        try:
            memory = read_header(path).get("memory")
        except (OSError, ExecutableFormatError):
            memory = None
        if isinstance(memory, dict) and all(isinstance(memory.get(f), int) for f in _MEMORY_FIELDS):
            _count(module, "analysis")
            return memory
    compiled, _ = load_or_compile(jitted, specs, static, identity=identity, module=module, folder=folder)
    return memory_of(compiled)


_REQUESTS_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
_HITS_EVENT = "/jax/compilation_cache/cache_hits"
_jax_events: Counter[str] = Counter()


@functools.cache
def _listen_to_jax_cache() -> None:
    import jax.monitoring

    def on_event(event: str, **_: Any) -> None:
        if event in (_REQUESTS_EVENT, _HITS_EVENT):
            _jax_events[event] += 1

    jax.monitoring.register_event_listener(on_event)


def _jax_cache_events() -> tuple[int, int]:
    _listen_to_jax_cache()
    return _jax_events[_REQUESTS_EVENT], _jax_events[_HITS_EVENT]


def _compiled_by_xla(before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Whether a compile between two `_jax_cache_events` asked JAX's cache and missed: XLA compiled."""
    return after[0] > before[0] and after[1] == before[1]


_prepared = threading.Lock()
_prepared_done: list[bool] = []


def prepare_runtime() -> None:
    """Registers what lowering would have: LAPACK's kernels, which CPU executables call.

    JAX fills LAPACK's function table while lowering a linear-algebra op
    (``jaxlib.lapack.prepare_lapack_call``); an executable loaded without any
    lowering would call through an empty table and crash the process. Once per
    process, thread-safe; it costs about 0.1 s (jaxlib imports scipy.linalg).
    """
    with _prepared:
        if _prepared_done:
            return
        import jax

        if jax.devices()[0].platform == "cpu":  # accelerators' solvers register at start-up
            try:
                jaxinternals.initialize_lapack()
            except Exception as err:  # noqa: BLE001 (never break a run: a kernel without LAPACK calls still runs)
                logger.warning("cannot initialize LAPACK for stored CPU kernels (%s: %s); "
                               "kernels with linear algebra may fail to run", type(err).__name__, err)
        _prepared_done.append(True)


def _load(path: Path, module: str) -> Any | None:
    import jax

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        logger.warning("cannot read stored executable %s (%s); compiling instead", path, e.strerror)
        _count(module, "unusable")
        return None
    try:
        header, body = split(data)
        payload, in_tree, out_tree = pickle.loads(zlib.decompress(body))
        by_id = {d.id: d for d in jax.devices()}
        # The devices it was compiled for; the default (every device) would make a
        # one-device program expect one shard per device.
        devices = [by_id[i] for i in header["devices"]]
        return jaxinternals.deserialize(payload, in_tree, out_tree, devices)
    except Exception as err:  # noqa: BLE001 (a damaged or foreign file must never stop a run)
        logger.warning("stored executable %s is unusable (%s: %s); compiling instead",
                       path.name, type(err).__name__, err)
        _count(module, "unusable")
        return None


def _save(path: Path, compiled: Any, module: str, seconds: float) -> bool:
    import jax
    import jaxlib

    try:
        devices = sorted({d.id for sharding in jax.tree_util.tree_leaves(compiled.output_shardings)
                          for d in sharding.device_set})
        payload, in_tree, out_tree = jaxinternals.serialize(compiled)
        # Level 1: a third of the size for a few milliseconds; decompressing is faster still.
        body = zlib.compress(pickle.dumps((payload, in_tree, out_tree), protocol=pickle.HIGHEST_PROTOCOL), 1)
    except Exception as err:  # noqa: BLE001 (an executable JAX cannot serialize runs without the store; said once)
        log = logger.debug if module in _UNSERIALIZABLE else logger.warning
        _UNSERIALIZABLE.add(module)
        log("cannot store %s: serializing it failed (%s: %s); it runs, compiled as usual",
            module, type(err).__name__, err)
        return False
    header = {
        "module": module, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "platform": jax.devices()[0].platform, "compile_seconds": round(seconds, 4), "written": time.time(),
        "memory": memory_of(compiled), "devices": devices,
        # What the key holds but a header reader (`jaxcache pull`) cannot recompute: a node
        # pulls only executables it can load.
        "host_cpu": _host_cpu() if jax.devices()[0].platform == "cpu" else None,
        "device_kind": jax.devices()[0].device_kind, "device_count": len(jax.devices()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomically(path, encode_file(header, body))  # readers see the whole file or none
    except OSError as e:
        # Once per folder and process: a read-only or full folder would say it for every kernel.
        if path.parent not in _UNWRITABLE:
            _UNWRITABLE.add(path.parent)
            logger.warning("cannot store compiled kernels in %s (%s); runs still work, without the store",
                           path.parent, e.strerror)
        return False
    return True


_UNWRITABLE: set[Path] = set()
_UNSERIALIZABLE: set[str] = set()


class SolverStore:
    """This store as the bundled solver's kernel store (`solver.store.KernelStore`).

    The solver knows nothing of jaxcache: `plug_into_solver` hands it this
    object. Each call finds the store's folder afresh (`active_folder`), so
    a later `jaxcache.configure` or ``JAXCACHE_EXECUTABLES=0`` takes effect.
    """

    def active(self) -> bool:
        return active_folder() is not None and jaxinternals.trace_context() is not None

    def context(self) -> Any:
        return jaxinternals.trace_context()

    def _folder(self) -> Path:
        folder = active_folder()
        if folder is None:
            raise RuntimeError("the executable store is off in this process")
        return folder

    def is_stored(self, specs: Any, *, identity: str, verify: bool = False) -> bool:
        folder = active_folder()
        return folder is not None and is_stored(specs, identity=identity, folder=folder, verify=verify)

    def stored_here(self, specs: Any, *, identity: str) -> bool:
        folder = active_folder()
        return folder is not None and stored_here(specs, identity=identity, folder=folder)

    def load(self, specs: Any, *, identity: str, module: str, prepare: bool = True) -> Any | None:
        folder = active_folder()
        return None if folder is None else load(specs, identity=identity, module=module, folder=folder,
                                                  prepare=prepare)

    def load_or_compile(self, jitted: Any, specs: Any, static: Mapping[str, Any], *, identity: str, module: str,
                        fresh: bool = False) -> tuple[Any, str]:
        return load_or_compile(jitted, specs, static, identity=identity, module=module, folder=self._folder(),
                               fresh=fresh)

    def memory_analysis(self, jitted: Any, specs: Any, static: Mapping[str, Any], *, identity: str,
                        module: str) -> dict[str, int] | None:
        return memory_analysis(jitted, specs, static, identity=identity, module=module, folder=self._folder())

    def prepare_runtime(self) -> None:
        prepare_runtime()


STORE = SolverStore()


def plug_into_solver() -> None:
    """Makes the bundled solver load and store its kernels here: now if ``solver`` is imported,
    else as soon as it is. `jaxcache.configure` and the ``jaxcache run`` bootstrap call it;
    a process that sets JAX up by hand may too."""
    importhook.when_imported("solver.store", lambda store: store.set_kernel_store(STORE))
