"""One outer iteration from its Jacobian as one kernel: factor ``J``, then the trial steps.

`least_squares` computes the Jacobian in its own kernel (`solver.jacobian`;
with "auto" chunk sizes it is the probe already compiled at the chosen
size, and on several devices it is the sharded one, gathered) and then runs
`lsq_iterate`: per iteration two kernels and one small read, instead of
three kernels (measured on curvefit 8, where an iteration takes about
0.3 ms: some 50 us less per iteration).

Fusing the Jacobian in too was measured and not kept: it compiled the
Jacobian a second time (the probe's compile no longer served the solve,
about 1.2 s more on kinetics 16 and 20% more for the default warm plan) and
ran 3-10% slower on mid-sized problems (bratu 16, rosenbrock 256).

Three uses of the one kernel, chosen by its arguments:

* an iteration: factor ``J`` (the Gram path or the SVD, `solver.step`), then
  trials until a step is accepted or the solve must stop (`solver.trial`);
* factor only: ``limits.max_nfev == nfev`` makes no trial, so the host can
  read the gradient at the new point first (a callback, ``verbose=2``, or the
  solve's last point, where ``skip_below=inf`` leaves out the factorization);
* trials only: ``reuse`` takes ``fac`` as it is and ignores ``J``.

A ``Delta`` of 0 asks for the initial trust radius, ``||x0 * scale_inv||``
(1 if zero), as scipy sets it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from solver.jacobian import ResidualSpec
from solver.step import Factorization, lsq_factor
from solver.trial import Limits, Point, TrialResult, lsq_step

__all__ = ["lsq_iterate"]


def lsq_iterate(
    J: jax.Array,
    point: Point,
    fac: Factorization,
    Delta: jax.Array,
    alpha: jax.Array,
    nfev: jax.Array,
    limits: Limits,
    data: tuple[Any, ...],
    skip_below: jax.Array,
    reuse: jax.Array,
    *,
    spec: ResidualSpec,
    jac_scale: bool,
) -> tuple[TrialResult, Factorization]:
    """Factors ``J`` at ``point`` (unless ``reuse``), then tries steps from it.

    Args:
        J: The Jacobian at ``point.x``.
        point: The current iterate.
        fac: The previous factorization: its ``scale_inv`` and ``gram`` start
            this one (at the first call, a carrier of shapes and of the
            starting scales); with ``reuse``, the factorization to use.
        Delta: Trust radius; 0 for the initial one.
        alpha, nfev, limits, data: As for `solver.trial.lsq_step`.
        skip_below: As for `solver.step.lsq_factor`.
        reuse: 0-d bool; use ``fac`` as it is.
        spec: The residual's static description.
        jac_scale: Whether ``x_scale="jac"``.

    Returns:
        Where the trials ended and the factorization at ``point``.
    """
    fac = jax.lax.cond(
        reuse,
        lambda: fac,
        lambda: lsq_factor(J, point.f, fac.scale_inv, fac.gram, skip_below, jac_scale=jac_scale),
    )
    radius = jnp.linalg.norm(point.x * fac.scale_inv)
    Delta = jnp.where(Delta > 0, Delta, jnp.where(radius > 0, radius, jnp.ones_like(radius)))
    return lsq_step(point, fac, Delta, alpha, nfev, limits, data, spec=spec), fac
