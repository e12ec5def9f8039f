"""One outer iteration's trial steps, fused into one traceable function.

`lsq_step` first checks ``gtol`` at the current point, then runs scipy's ``trf`` inner loop (no bounds) in a
``lax.while_loop``: solve the trust-region subproblem from the iteration's
one factorization (`solver.step.trust_region_step`), evaluate the residual
at the trial point, update the radius, check ``ftol``/``xtol``, and repeat
until a step reduces the cost, a termination test passes, or ``max_nfev``
is reached. A solve then costs one kernel call and one small device-to-host
read per iteration, however many trials it takes, instead of several
dispatches and syncs per trial.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from solver.jacobian import ResidualSpec, lsq_residual
from solver.step import Factorization, trust_region_step

__all__ = ["Limits", "Point", "TrialResult", "lsq_step"]


class Point(NamedTuple):
    """An iterate: ``x``, its residuals ``f`` and ``cost = 0.5 ||f||^2``."""

    x: jax.Array
    f: jax.Array
    cost: jax.Array


class Limits(NamedTuple):
    """Stopping parameters as 0-d arrays (``max_nfev`` int32, tolerances working dtype)."""

    max_nfev: jax.Array
    ftol: jax.Array
    xtol: jax.Array
    gtol: jax.Array


class TrialResult(NamedTuple):
    """Where the trials ended.

    Attributes:
        point: The last trial point; the new iterate when ``actual > 0``.
        actual: Actual cost reduction of the last finite trial (<= 0: none accepted).
        Delta, alpha: Radius and Levenberg-Marquardt parameter for the next iteration.
        nfev: Residual evaluations so far (int32).
        status: 1 when ``gtol`` already holds at ``point`` (then no trial is
            made), 2, 3 or 4 when ``ftol``/``xtol`` stopped the solve, else 0.
        step_norm: ``||x_new - x||`` of the last trial.
        report: ``[nfev, status, accepted]`` (int32, ``accepted = actual > 0``):
            all the host reads per iteration, as one transfer (reading four
            0-d outputs costs about 30 us more, measured, a tenth of an
            iteration on small problems).
    """

    point: Point
    actual: jax.Array
    Delta: jax.Array
    alpha: jax.Array
    nfev: jax.Array
    status: jax.Array
    step_norm: jax.Array
    report: jax.Array


def _update_radius(
    Delta: jax.Array, actual: jax.Array, predicted: jax.Array, step_norm: jax.Array, bound_hit: jax.Array
) -> tuple[jax.Array, jax.Array]:
    one, zero = jnp.ones_like(Delta), jnp.zeros_like(Delta)
    ratio = jnp.where(
        predicted > 0,
        actual / jnp.where(predicted > 0, predicted, one),
        jnp.where((predicted == 0) & (actual == 0), one, zero),
    )
    Delta = jnp.where(ratio < 0.25, 0.25 * step_norm, jnp.where((ratio > 0.75) & bound_hit, 2 * Delta, Delta))
    return Delta, ratio


def _termination(
    dF: jax.Array, F: jax.Array, dx_norm: jax.Array, x_norm: jax.Array, ratio: jax.Array, limits: Limits
) -> jax.Array:
    f_ok = (dF < limits.ftol * F) & (ratio > 0.25)
    x_ok = dx_norm < limits.xtol * (limits.xtol + x_norm)
    return jnp.where(f_ok & x_ok, 4, jnp.where(f_ok, 2, jnp.where(x_ok, 3, 0))).astype(jnp.int32)


def lsq_step(
    point: Point,
    fac: Factorization,
    Delta: jax.Array,
    alpha: jax.Array,
    nfev: jax.Array,
    limits: Limits,
    data: tuple[Any, ...],
    *,
    spec: ResidualSpec,
) -> TrialResult:
    """Tries steps from ``point`` until one is accepted or the solve must stop.

    Args:
        point: The current iterate.
        fac: `solver.step.lsq_factor` of the Jacobian at ``point.x``.
        Delta: Trust-region radius (scaled variables).
        alpha: Last Levenberg-Marquardt parameter.
        nfev: Residual evaluations so far (int32); the caller ensures ``nfev < max_nfev``.
        limits: ``max_nfev``, ``ftol``, ``xtol`` and ``gtol``.
        data: Objective data, as for `solver.jacobian.lsq_residual`.
        spec: The residual's static description.
    """
    d = 1 / fac.scale_inv
    x_norm = jnp.linalg.norm(point.x)
    minus_one = -jnp.ones_like(point.cost)

    def cond(state: TrialResult) -> jax.Array:
        return (state.actual <= 0) & (state.nfev < limits.max_nfev) & (state.status == 0)

    def body(state: TrialResult) -> TrialResult:
        Delta, alpha = state.Delta, state.alpha
        st = trust_region_step(fac, Delta, alpha)
        step = d * st.step
        x_new = point.x + step
        f_new = lsq_residual(x_new, data, spec=spec)
        step_h_norm = jnp.linalg.norm(st.step)
        cost_new = 0.5 * jnp.dot(f_new, f_new)
        finite = jnp.all(jnp.isfinite(f_new))
        actual = point.cost - cost_new
        Delta_new, ratio = _update_radius(Delta, actual, st.predicted_reduction, step_h_norm, step_h_norm > 0.95 * Delta)
        step_norm = jnp.linalg.norm(step)
        status = _termination(actual, point.cost, step_norm, x_norm, ratio, limits)
        # A trial that stops the solve keeps Delta and alpha as they were (scipy breaks first).
        go_on = status == 0
        Delta_next = jnp.where(go_on, Delta_new, Delta)
        alpha_next = jnp.where(go_on, st.alpha * Delta / Delta_new, st.alpha)
        # A non-finite trial only shrinks the radius and is retried.
        return TrialResult(
            point=Point(x_new, f_new, cost_new),
            actual=jnp.where(finite, actual, state.actual),
            Delta=jnp.where(finite, Delta_next, 0.25 * step_h_norm),
            alpha=jnp.where(finite, alpha_next, st.alpha),
            nfev=state.nfev + 1,
            status=jnp.where(finite, status, state.status),
            step_norm=jnp.where(finite, step_norm, state.step_norm),
            report=state.report,
        )

    init = TrialResult(
        point=point, actual=minus_one, Delta=Delta, alpha=alpha, nfev=nfev,
        status=jnp.where(fac.g_norm < limits.gtol, 1, 0).astype(jnp.int32),
        step_norm=jnp.zeros_like(point.cost),
        report=jnp.zeros((3,), jnp.int32),
    )
    out = jax.lax.while_loop(cond, body, init)
    return out._replace(report=jnp.stack([out.nfev, out.status, (out.actual > 0).astype(jnp.int32)]))
