"""Every jitted kernel the solver runs, and their abstract arguments for warming.

`least_squares` calls only the four module-level jitted functions below, each
a function of arrays plus hashable static configuration:

| kernel | module name | static config |
|---|---|---|
| `lsq_residual_jit` | ``jit_lsq_residual`` | `ResidualSpec` |
| `lsq_jacobian_jit` | ``jit_lsq_jacobian`` | `ResidualSpec`, `JacobianPlan` |
| `lsq_factor_jit` | ``jit_lsq_factor`` | ``jac_scale`` |
| `lsq_step_jit` | ``jit_lsq_step`` | none |

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
from solver.step import lsq_factor, lsq_step

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
lsq_step_jit = jax.jit(lsq_step)


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
    out = [
        Kernel("residual", functools.partial(lsq_residual, spec=objective.spec), (x, data)),
        Kernel(
            "jacobian",
            functools.partial(lsq_jacobian, spec=objective.spec, plan=objective.plan),
            (x, data),
        ),
        Kernel(
            "factor",
            functools.partial(lsq_factor, jac_scale=isinstance(x_scale, str) and x_scale == "jac"),
            (jax.ShapeDtypeStruct((m, n), dtype), jax.ShapeDtypeStruct((m,), dtype), x),
        ),
        Kernel(
            "step",
            lsq_step,
            (
                jax.ShapeDtypeStruct((k,), dtype),
                jax.ShapeDtypeStruct((n, k), dtype),
                jax.ShapeDtypeStruct((k,), dtype),
                jax.ShapeDtypeStruct((), np.bool_),
                scalar,
                scalar,
            ),
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
                    functools.partial(lsq_jacobian, spec=spec, plan=plan),
                    (x, _spec_of(pdata)),
                )
            )
    return tuple(out)
