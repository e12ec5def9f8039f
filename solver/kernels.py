"""Every jitted kernel the solver runs, and their abstract arguments for warming.

`least_squares` calls only the four module-level jitted functions below, each
a function of arrays plus hashable static configuration:

| kernel | module name | static config | calls |
|---|---|---|---|
| `lsq_residual_jit` | ``jit_lsq_residual`` | `ResidualSpec` | once, at ``x0`` |
| `lsq_jacobian_jit` | ``jit_lsq_jacobian`` | `ResidualSpec`, `JacobianPlan` | per iteration |
| `lsq_factor_jit` | ``jit_lsq_factor`` | ``jac_scale`` | per iteration |
| `lsq_step_jit` | ``jit_lsq_step`` | `ResidualSpec` | per iteration (all trials) |

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
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from solver import memory
from solver.jacobian import lsq_jacobian, lsq_residual
from solver.objective import ObjectiveFunction
from solver.step import Factorization, lsq_factor
from solver.trial import Limits, Point, lsq_step

__all__ = [
    "Kernel",
    "kernels",
    "lsq_factor_jit",
    "lsq_jacobian_jit",
    "lsq_residual_jit",
    "lsq_step_jit",
]

lsq_residual_jit = jax.jit(lsq_residual, static_argnames=("spec",))
lsq_jacobian_jit = jax.jit(lsq_jacobian, static_argnames=("spec", "plan"))
lsq_factor_jit = jax.jit(lsq_factor, static_argnames=("jac_scale",))
lsq_step_jit = jax.jit(lsq_step, static_argnames=("spec",))


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
        """Lowers and compiles the kernel (writing the persistent cache if enabled)."""
        return jax.jit(self.fn).lower(*self.args).compile()


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
        The kernels, residual and Jacobian first.
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
        g_norm=scalar, gram=flag,
    )
    out = [
        Kernel("residual", _bind(lsq_residual, spec=objective.spec), (x, data)),
        Kernel(
            "jacobian",
            _bind(lsq_jacobian, spec=objective.spec, plan=objective.plan),
            (x, data),
        ),
        Kernel(
            "factor",
            _bind(lsq_factor, jac_scale=isinstance(x_scale, str) and x_scale == "jac"),
            (jax.ShapeDtypeStruct((m, n), dtype), vec_m, x, flag),
        ),
        Kernel(
            "step",
            _bind(lsq_step, spec=objective.spec),
            (Point(x, vec_m, scalar), fac, scalar, scalar, count, Limits(count, scalar, scalar, scalar), data),
        ),
    ]
    for block, model in enumerate(objective.memory_models):
        if model is None:
            continue
        for chunk in sorted(set(memory.probe_chunk_sizes(n))):
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
