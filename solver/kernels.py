"""Every jitted kernel the solver runs, and their abstract arguments for warming.

`least_squares` calls only the three module-level jitted functions below, each a
function of arrays plus hashable static configuration:

| kernel | module name | static config | calls |
|---|---|---|---|
| `lsq_residual_jit` | ``jit_lsq_residual`` | `ResidualSpec` | once, at ``x0`` |
| `lsq_jacobian_jit` | ``jit_lsq_jacobian`` | `ResidualSpec`, `JacobianPlan` | per iteration, and for "auto"'s probes |
| `lsq_iterate_jit` | ``jit_lsq_iterate`` | `ResidualSpec`, ``jac_scale`` | per iteration: factor J, then all trials |

`kernels` lists them for one objective and initial point, each as a
`Kernel` whose ``fn`` is the undecorated function with its static
configuration bound (`functools.partial`), so that
``jax.jit(kernel.fn).lower(*kernel.args).compile()`` lowers to the same
StableHLO, module name and options as the real call, and hence writes the
persistent-cache entry the solve later looks up. (Wrapping the already-jitted
function in another ``jax.jit`` would nest a call and change the key.) Scalars
are 0-d arrays of the working dtype, never Python floats, since weak types
change the key.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from solver import memory
from solver.iterate import lsq_iterate
from solver.jacobian import lsq_jacobian, lsq_residual
from solver.step import Factorization
from solver.store import KernelStore, kernel_store
from solver.trial import Limits, Point

if TYPE_CHECKING:
    from solver.objective import ObjectiveFunction

__all__ = [
    "BoundKernel",
    "Kernel",
    "abstract",
    "bound",
    "kernels",
    "lsq_iterate_jit",
    "lsq_jacobian_jit",
    "lsq_residual_jit",
    "memory_of",
    "prefetch",
    "probe_memory",
]

logger = logging.getLogger(__name__)

lsq_residual_jit = jax.jit(lsq_residual, static_argnames=("spec",))
lsq_jacobian_jit = jax.jit(lsq_jacobian, static_argnames=("spec", "plan"))
lsq_iterate_jit = jax.jit(lsq_iterate, static_argnames=("spec", "jac_scale"))


def abstract(args: Any) -> Any:
    """``args`` as `jax.ShapeDtypeStruct` leaves, weak types kept (they change the program)."""
    def spec(a: Any) -> Any:
        shape = tuple(a.shape) if hasattr(a, "shape") else np.shape(a)
        return jax.ShapeDtypeStruct(shape, a.dtype, weak_type=bool(getattr(a, "weak_type", False)))

    return jax.tree_util.tree_map(spec, args)


_MEMORY_FIELDS = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                  "alias_size_in_bytes", "generated_code_size_in_bytes")


def memory_of(compiled: Any) -> dict[str, int] | None:
    """``compiled.memory_analysis()`` as a dict; None where the backend has none."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 (backends without the analysis raise; the caller says what it does instead)
        return None
    if stats is None:
        return None
    return {name: int(getattr(stats, name, 0)) for name in _MEMORY_FIELDS}


class Kernel(NamedTuple):
    """One kernel to compile ahead of time.

    Attributes:
        name: Readable label, e.g. ``"jacobian"`` or ``"probe_jacobian[c=8]"``.
        fn: The pure function with static configuration bound; compile with
            ``jax.jit(fn).lower(*args).compile()``.
        args: Abstract arguments (pytrees of `jax.ShapeDtypeStruct`).
    """

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]

    def compile(self) -> Any:
        """Lowers and compiles the kernel (writing the persistent cache if enabled).

        The solver's own kernels go through the kernel store, when one is
        plugged in, exactly as `least_squares` calls them (see `bound`).
        """
        jitted = _JITTED.get(getattr(self.fn, "func", None))
        if jitted is not None:
            compiled = compile_through_store(jitted, self.fn.keywords, self.args)
            if compiled is not None:
                return compiled
        return jax.jit(self.fn).lower(*self.args).compile()

    def warm(self) -> str | None:
        """Makes sure a later run finds this kernel compiled: what ``jaxcache warm`` does.

        Returns:
            ``"cached"`` when the kernel store already had it (checked from
            its header and checksum, nothing loaded), ``"compiled"`` when this
            process compiled and stored it (now, compiled afresh if only JAX's
            cache had it, or while building the objective), None when no
            store serves this kernel (JAX's cache alone decides).
        """
        jitted = _JITTED.get(getattr(self.fn, "func", None))
        target = _store_target(jitted, self.fn.keywords) if jitted is not None else None
        if target is None:
            self.compile()
            return None
        store, identity = target
        if store.is_stored(self.args, identity=identity, verify=True):
            return "compiled" if store.stored_here(self.args, identity=identity) else "cached"
        store.load_or_compile(jitted, self.args, self.fn.keywords, identity=identity, module=f"jit_{jitted.__name__}",
                              fresh=True)
        return "compiled"


_JITTED = {
    lsq_residual: lsq_residual_jit,
    lsq_jacobian: lsq_jacobian_jit,
    lsq_iterate: lsq_iterate_jit,
}
# (identity, argument structure) -> the compiled kernel, for every later call in this process.
_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}


@functools.cache
def source_fingerprint() -> str | None:
    """A hash of the solver package's source: a stored executable is only reused by the same code.

    None (no store) when the source cannot be read, e.g. an install without ``.py`` files.
    Constants changed at run time (``solver.problems.kinetics.SPECIES = 8``) are not
    in it: the bundled problems take their data through ``params``, which is.
    """
    root = Path(__file__).parent
    digest = hashlib.sha256()
    paths = sorted(root.rglob("*.py"))
    if not paths:
        return None
    try:
        for path in paths:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError:
        return None
    return digest.hexdigest()


def _function_name(fn: Any) -> str | None:
    """``module:qualname`` of a module-level function of this package, else None.

    Only such functions can be named without tracing them: a lambda, a closure
    or a user's function may change in ways no name shows.
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module.split(".")[0] != __name__.split(".")[0] or "<" in qualname:
        return None
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is fn else None


def _static_identity(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, tuple):
        parts = [_static_identity(v) for v in value]
        return None if None in parts else f"{type(value).__qualname__}({','.join(parts)})"  # type: ignore[arg-type]
    if callable(value):
        return _function_name(value)
    return None


def _identity(jitted: Any, static: dict[str, Any]) -> str | None:
    """What names a kernel's code and static configuration across processes, or None."""
    parts = [_static_identity(static[name]) for name in sorted(static)]
    fingerprint = source_fingerprint()
    if None in parts or fingerprint is None:
        return None
    return "|".join([f"{__name__}:{jitted.__name__}", fingerprint, *sorted(static), *parts])  # type: ignore[list-item]


def _store_target(jitted: Any, static: dict[str, Any]) -> tuple[KernelStore, str] | None:
    """The kernel store and the kernel's identity, or None (no store, or code that cannot be named)."""
    store = kernel_store()
    if store is None or any(getattr(value, "num_devices", 1) > 1 for value in static.values()):
        # A deserialized multi-device executable does not place its inputs as jit
        # does ("expected 2 shards"): sharded kernels take the ordinary path.
        return None
    try:
        if not store.active():
            return None
    except Exception as err:  # noqa: BLE001 (the store must never break a solve)
        _store_failed("asking the kernel store whether it is on", err)
        return None
    identity = _identity(jitted, static)
    return None if identity is None else (store, identity)


_SAID: set[str] = set()


def _store_failed(what: str, err: BaseException) -> None:
    """A kernel store that fails is bypassed, never fatal: said once per kind of failure."""
    if what not in _SAID:
        _SAID.add(what)
        logger.warning("%s failed (%s: %s); compiling the ordinary way", what, type(err).__name__, err)


def compile_through_store(jitted: Any, static: dict[str, Any], specs: tuple[Any, ...]) -> Any | None:
    """The compiled kernel from the kernel store (compiling and storing on a miss), or None
    when there is no store or the kernel cannot be named."""
    target = _store_target(jitted, static)
    if target is None:
        return None
    store, identity = target
    try:
        compiled, _ = store.load_or_compile(jitted, specs, static, identity=identity, module=f"jit_{jitted.__name__}")
    except Exception as err:  # noqa: BLE001 (the store must never break a solve: the ordinary path decides)
        _store_failed(f"the kernel store for jit_{jitted.__name__}", err)
        return None
    return compiled


def is_stored(jitted: Any, static: dict[str, Any], specs: tuple[Any, ...]) -> bool:
    """Whether the kernel store holds this kernel for these abstract arguments (nothing loaded)."""
    target = _store_target(jitted, static)
    if target is None:
        return False
    try:
        return target[0].is_stored(specs, identity=target[1])
    except Exception as err:  # noqa: BLE001 (then it is simply not known to be stored)
        _store_failed("asking the kernel store for a kernel", err)
        return False


def kernel_memory(jitted: Any, static: dict[str, Any], specs: tuple[Any, ...]) -> dict[str, int] | None:
    """The compiler's memory analysis of a kernel (see `memory_of`).

    Through a kernel store this may read a stored header and load nothing;
    None where the backend has no analysis.
    """
    target = _store_target(jitted, static)
    if target is not None:
        try:
            return target[0].memory_analysis(jitted, specs, static, identity=target[1],
                                             module=f"jit_{jitted.__name__}")
        except Exception as err:  # noqa: BLE001 (the store must never break a solve)
            _store_failed("reading a kernel's memory analysis from the kernel store", err)
    return memory_of(jitted.lower(*specs, **static).compile())


def probe_memory(objective: ObjectiveFunction, block: int | None, chunk: int) -> dict[str, int] | None:
    """The memory analysis of the Jacobian kernel at one chunk size: "auto"'s probe (see `solver.memory`)."""
    spec, plan, data = memory.probe_plan(objective, block, chunk)
    x_spec = jax.ShapeDtypeStruct((objective.dim_x,), objective.dtype)
    return kernel_memory(lsq_jacobian_jit, {"spec": spec, "plan": plan}, abstract((x_spec, data)))


def _call_key(identity: str, context: Any, args: Any) -> tuple[Any, ...]:
    """What decides which compiled kernel serves a call: arrays or their specs give the same key."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    return (identity, context, treedef,
            *((tuple(np.shape(a)), np.dtype(a.dtype), bool(getattr(a, "weak_type", False))) for a in leaves))


class BoundKernel:
    """A jitted kernel with its static arguments bound, served from a kernel store.

    The first call for each argument structure uses an executable loaded from
    the store (by `prefetch`, or then and there: no tracing, no lowering), or
    compiles and stores one; later calls reuse it. See `bound`.
    """

    def __init__(self, jitted: Any, static: dict[str, Any], store: KernelStore, identity: str) -> None:
        self.jitted, self.static, self.store, self.identity = jitted, static, store, identity
        self.module = f"jit_{jitted.__name__}"
        self.plain = functools.partial(jitted, **static)

    def _key(self, args: Any) -> tuple[Any, ...]:
        return _call_key(self.identity, self.store.context(), args)

    def prefetch(self, specs: tuple[Any, ...]) -> None:
        """Loads the stored executable for these abstract arguments, if there is one (thread-safe)."""
        key = self._key(specs)
        if key in _COMPILED or key in _PREFETCHED:
            return
        compiled = self.store.load(specs, identity=self.identity, module=self.module, prepare=False)
        if compiled is not None:
            _PREFETCHED[key] = compiled

    def __call__(self, *args: Any) -> Any:
        key = self._key(args)
        compiled = _COMPILED.get(key)
        if compiled is not None:
            return compiled(*args)
        compiled = _PREFETCHED.pop(key, None)
        if compiled is None:
            compiled = compile_through_store(self.jitted, self.static, abstract(args)) or self.plain
        if compiled is self.plain:
            out = compiled(*args)
        else:
            try:
                out = jax.block_until_ready(compiled(*args))  # its first run: errors surface here
            except Exception as err:  # noqa: BLE001
                # A stored or AOT-compiled executable that rejects its arguments or fails to
                # run: the ordinary way is always right (and raises the real error, if any).
                logger.warning("compiled %s failed (%s: %s); using jax.jit", self.module, type(err).__name__, err)
                compiled, out = self.plain, self.plain(*args)
        _COMPILED[key] = compiled
        return out


# Loaded by `prefetch`, not yet called: the first call checks that the executable accepts its arguments.
_PREFETCHED: dict[tuple[Any, ...], Any] = {}


def bound(jitted: Any, **static: Any) -> Callable[..., Any]:
    """``jitted`` with its static arguments bound, as `least_squares` calls it.

    With a kernel store plugged in (`solver.store`) and a kernel that can be
    named, a `BoundKernel`; otherwise plain ``jitted``.
    """
    target = _store_target(jitted, static)
    if target is None:
        return functools.partial(jitted, **static)
    return BoundKernel(jitted, static, *target)


def prefetch(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    """Loads the stored executables of several kernels at once, one thread per core.

    Deserializing a large CPU executable takes up to a second and releases
    the GIL, so loading a solve's kernels side by side halves a warm start on
    two cores, and the runtime is prepared meanwhile. Only loads: a kernel
    missing from the store is compiled at its first call, as usual.
    """
    todo = [(kernel, specs) for kernel, specs in calls if isinstance(kernel, BoundKernel)]
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
        futures = [pool.submit(kernel.prefetch, specs) for kernel, specs in todo]
        # Meanwhile, what running them needs (LAPACK's table: an import, GIL-bound but short).
        todo[0][0].store.prepare_runtime()
        for future in futures:
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 (a kernel not prefetched is loaded or compiled at its call)
                logger.debug("prefetch failed: %s", err)


def _bind(fn: Callable[..., Any], **static: Any) -> Callable[..., Any]:
    """``functools.partial(fn, **static)`` that keeps ``fn``'s name.

    The name becomes the module name (``jit_<name>``), which is part of the
    persistent-cache key: jax 0.6 names a bare partial ``jit__unnamed_wrapped_function_``,
    so without this a warmed kernel would never match the real call there.
    """
    bound = functools.partial(fn, **static)
    bound.__name__ = fn.__name__  # type: ignore[attr-defined]
    bound.__qualname__ = fn.__qualname__  # type: ignore[attr-defined]
    return bound


def _spec_of(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=getattr(a, "weak_type", False)),
        tree,
    )


def kernels(
    objective: ObjectiveFunction, x0_spec: Any, *, x_scale: float | str | np.ndarray = 1.0
) -> tuple[Kernel, ...]:
    """The kernels `least_squares(objective, x0, x_scale=x_scale)` compiles.

    Building the objective resolves ``"auto"`` chunk sizes, which itself
    compiles probe kernels; those are listed too (``probe_jacobian[...]``), since a
    fresh process resolving "auto" compiles them again.

    Args:
        objective: The objective (built here for ``x0_spec`` if needed).
        x0_spec: The initial point or a ``jax.ShapeDtypeStruct`` of it.
        x_scale: As passed to `least_squares`; only whether it is ``"jac"`` matters.

    Returns:
        The kernels: residual, jacobian, iterate, then the "auto" probes.
    """
    objective.build(x0_spec)
    n, m, dtype = objective.dim_x, objective.dim_f, objective.dtype
    k = min(m, n)
    x = jax.ShapeDtypeStruct((n,), dtype)
    data = _spec_of(objective.data)
    scalar = jax.ShapeDtypeStruct((), dtype)
    flag = jax.ShapeDtypeStruct((), np.bool_)
    count = jax.ShapeDtypeStruct((), np.int32)
    vec_m = jax.ShapeDtypeStruct((m,), dtype)
    fac = Factorization(
        s=jax.ShapeDtypeStruct((k,), dtype), V=jax.ShapeDtypeStruct((n, k), dtype),
        suf=jax.ShapeDtypeStruct((k,), dtype), grad=x, scale_inv=x, full_rank=flag,
        g_norm=scalar, gram=flag, gn=x,
    )
    jac_scale = isinstance(x_scale, str) and x_scale == "jac"
    out = [
        Kernel("residual", _bind(lsq_residual, spec=objective.spec), (x, data)),
        Kernel("jacobian", _bind(lsq_jacobian, spec=objective.spec, plan=objective.plan), (x, data)),
        Kernel(
            "iterate",
            _bind(lsq_iterate, spec=objective.spec, jac_scale=jac_scale),
            (jax.ShapeDtypeStruct((m, n), dtype), Point(x, vec_m, scalar), fac, scalar, scalar, count,
             Limits(count, scalar, scalar, scalar), data, scalar, flag),
        ),
    ]
    for block, model in enumerate(objective.memory_models):
        if model is None:
            continue
        for chunk in model.probes:
            spec, plan, pdata = memory.probe_plan(
                objective, None if not objective.plan.blocked else block, chunk
            )
            out.append(
                Kernel(
                    f"probe_jacobian[block={block},c={chunk}]",
                    _bind(lsq_jacobian, spec=spec, plan=plan),
                    (x, _spec_of(pdata)),
                )
            )
    return tuple(out)
