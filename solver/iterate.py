"""One outer iteration as one kernel: the trial steps, then the Jacobian and its
factorization at the accepted point.

On one device `least_squares` runs a whole iteration through `lsq_iterate`,
so it dispatches one kernel and reads one small vector per iteration instead
of three kernels with the host in between (measured on curvefit 8, where an
iteration takes about 0.3 ms: 50-100 us less per iteration). The Jacobian
lives and dies inside the kernel. On several devices the sharded Jacobian
stays its own kernel (`solver.lsq` then calls `lsq_step`, `lsq_jacobian` and
`lsq_factor` in turn), so that the factorization runs on one device.

The first call of a solve passes ``start=True``: no trial is made, the given
point counts as accepted and is factored, and the initial trust radius is
set from it (``||x0 * scale_inv||``, 1 if zero, as scipy). ``fac`` is then only a
carrier of shapes and of the starting ``scale_inv`` and ``gram`` flag.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from solver.jacobian import JacobianPlan, ResidualSpec, lsq_jacobian
from solver.step import Factorization, lsq_factor
from solver.trial import Limits, Point, TrialResult, lsq_step

__all__ = ["Iteration", "lsq_iterate"]


class Iteration(NamedTuple):
    """What one `lsq_iterate` call gives.

    Attributes:
        trial: Where the trials ended (`solver.trial.TrialResult`).
        fac: The factorization at ``trial.point`` when it was accepted (with
            only the gradient when the solve ends there), else the one passed in.
    """

    trial: TrialResult
    fac: Factorization


def lsq_iterate(
    point: Point,
    fac: Factorization,
    Delta: jax.Array,
    alpha: jax.Array,
    nfev: jax.Array,
    limits: Limits,
    data: tuple[Any, ...],
    start: jax.Array,
    *,
    spec: ResidualSpec,
    plan: JacobianPlan,
    jac_scale: bool,
) -> Iteration:
    """Trial steps from ``point`` (none when ``start``), then J and its factorization at the accepted point.

    Args:
        point, fac, Delta, alpha, nfev, limits, data: As for `solver.trial.lsq_step`.
        start: 0-d bool; the solve's first call (see the module doc).
        spec, plan: The residual and its Jacobian's chunking.
        jac_scale: Whether ``x_scale="jac"``.
    """

    def started() -> TrialResult:
        report = jnp.stack([nfev, jnp.zeros_like(nfev), jnp.ones_like(nfev)])
        return TrialResult(point, jnp.ones_like(point.cost), Delta, alpha, nfev, jnp.zeros_like(nfev),
                           jnp.zeros_like(point.cost), report)

    trial = jax.lax.cond(
        start, started, lambda: lsq_step(point, fac, Delta, alpha, nfev, limits, data, spec=spec)
    )
    accepted = trial.actual > 0
    # Past an accepted point where the solve ends, only its gradient is needed.
    ends = (trial.status != 0) | (trial.nfev >= limits.max_nfev)
    skip_below = jnp.where(ends, jnp.full_like(limits.gtol, jnp.inf), limits.gtol)

    def refactor() -> Factorization:
        J = lsq_jacobian(trial.point.x, data, spec=spec, plan=plan)
        return lsq_factor(J, trial.point.f, fac.scale_inv, fac.gram, skip_below, jac_scale=jac_scale)

    new_fac = jax.lax.cond(accepted, refactor, lambda: fac)
    radius = jnp.linalg.norm(point.x * new_fac.scale_inv)  # scipy's norm(x0 * scale_inv)
    radius = jnp.where(radius > 0, radius, jnp.ones_like(radius))
    trial = trial._replace(Delta=jnp.where(start, radius, trial.Delta))
    return Iteration(trial, new_fac)
