"""`least_squares`: a scaled trust-region Levenberg-Marquardt method (no bounds).

The outer loop follows scipy's ``trf`` without bounds (and MINPACK's LM): per
iteration one factorization of the scaled Jacobian (`solver.step.lsq_factor`),
then as many trial radii as needed solved from it, each trial costing one
residual evaluation (`solver.trial.lsq_step`, which also checks ``gtol``).
Per iteration the host dispatches two kernels, the Jacobian and
`solver.iterate.lsq_iterate` (the factorization and all trials), and reads one
vector of three ints to decide whether to go on (a callback or ``verbose=2``
adds a factor-only call and one read, so that they see the new point's
gradient before any trial from it). Iterates, residuals and factorizations stay
on the device and run only in the module-level kernels of `solver.kernels`,
so a warmed persistent cache covers the whole solve and no other computation
is compiled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from solver.errors import SolverError
from solver.kernels import (
    BoundKernel,
    bound,
    kernels,
    lsq_iterate_jit,
    lsq_jacobian_jit,
    lsq_residual_jit,
    prefetch,
)
from solver.objective import Objective, ObjectiveFunction
from solver.result import LeastSquaresResult
from solver.step import Factorization
from solver.trial import Limits, Point

__all__ = ["IterationInfo", "least_squares"]

logger = logging.getLogger(__name__)
_EPS = np.finfo(np.float64).eps


class IterationInfo(NamedTuple):
    """What a callback sees after each iteration."""

    iteration: int
    x: np.ndarray
    cost: float
    optimality: float
    step_norm: float
    nfev: int
    njev: int


def _validate(
    ftol: float, xtol: float, gtol: float, max_nfev: int | None, verbose: int, callback: Any
) -> None:
    for name, tol in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if not (isinstance(tol, (int, float)) and np.isfinite(tol) and tol >= 0):
            raise ValueError(f"{name}={tol!r} must be a finite number >= 0")
    if max(ftol, xtol, gtol) < _EPS:
        raise ValueError(f"at least one of ftol, xtol, gtol must exceed {_EPS:.1e}")
    if max_nfev is not None and (
        isinstance(max_nfev, bool) or not isinstance(max_nfev, (int, np.integer)) or max_nfev <= 0
    ):
        raise ValueError(f"{max_nfev=} must be a positive int or None")
    if verbose not in (0, 1, 2):
        raise ValueError(f"{verbose=} must be 0, 1 or 2")
    if callback is not None and not callable(callback):
        raise ValueError("callback must be callable or None")


def _scale_inv(x_scale: float | str | np.ndarray, n: int) -> np.ndarray:
    if isinstance(x_scale, str):
        if x_scale != "jac":
            raise ValueError(f"{x_scale=} must be 'jac', a positive number or an array of shape ({n},)")
        return np.zeros(n)
    scale = np.asarray(x_scale, dtype=np.float64)
    if scale.ndim > 1 or (scale.ndim == 1 and scale.shape != (n,)) or not np.all(scale > 0) or not np.all(np.isfinite(scale)):
        raise ValueError(f"x_scale must be 'jac', a positive number or a positive array of shape ({n},)")
    return np.broadcast_to(1 / scale, (n,)).copy()


def least_squares(
    objective: ObjectiveFunction | Objective,
    x0: Any,
    *,
    ftol: float = 1e-8,
    xtol: float = 1e-8,
    gtol: float = 1e-8,
    max_nfev: int | None = None,
    x_scale: float | str | np.ndarray = 1.0,
    verbose: int = 0,
    callback: Callable[[IterationInfo], bool | None] | None = None,
) -> LeastSquaresResult:
    """Minimizes ``0.5 * ||f(x)||^2`` by trust-region Levenberg-Marquardt.

    Args:
        objective: The residuals (an `Objective` is wrapped in a batched
            `ObjectiveFunction`). Built for ``x0`` if needed.
        x0: Initial point, 1-D.
        ftol: Stop when the cost drops by less than ``ftol * cost`` on a good step.
        xtol: Stop when ``||dx|| < xtol * (xtol + ||x||)``.
        gtol: Stop when ``max |J.T f| < gtol``.
        max_nfev: Residual evaluations allowed (default ``100 * n``).
        x_scale: Variable scales, or ``"jac"`` for the inverse Jacobian column norms.
        verbose: 0 silent, 1 a final report, 2 a line per iteration (logged to
            the ``solver`` logger, which gets a stderr handler if it has none).
        callback: Called with an `IterationInfo` after each iteration; returning
            True or raising StopIteration stops the solve (status -2).

    Returns:
        A `LeastSquaresResult` with scipy's fields and status codes.

    Raises:
        ValueError: On invalid options, a non-1-D or non-finite ``x0``, or
            non-finite residuals at ``x0``.
    """
    _validate(ftol, xtol, gtol, max_nfev, verbose, callback)
    if isinstance(objective, Objective):
        objective = ObjectiveFunction(objective)
    if not isinstance(objective, ObjectiveFunction):
        raise ValueError(f"objective must be an Objective or ObjectiveFunction, got {type(objective).__name__}")
    x0 = np.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"x0 must be 1-D, got shape {x0.shape}")
    if not np.all(np.isfinite(x0)):
        raise ValueError("x0 must be finite")
    _log_level = _verbose_logging(verbose)
    start = time.perf_counter()
    objective.build(x0)
    dtype, n, spec, plan, data = objective.dtype, objective.dim_x, objective.spec, objective.plan, objective.data
    scale_inv = _scale_inv(x_scale, n)
    jac_scale = isinstance(x_scale, str)
    max_nfev = 100 * n if max_nfev is None else int(max_nfev)
    per_iteration_host = callback is not None or verbose == 2
    residual_kernel = bound(lsq_residual_jit, spec=spec)
    jacobian_kernel = bound(lsq_jacobian_jit, spec=spec, plan=plan)
    iterate_kernel = bound(lsq_iterate_jit, spec=spec, jac_scale=jac_scale)
    in_use = (residual_kernel, jacobian_kernel, iterate_kernel)
    if any(isinstance(kernel, BoundKernel) for kernel in in_use):
        # Load them from the executable store side by side.
        prefetch([(kernel, k.args) for kernel, k in zip(in_use, kernels(objective, x0, x_scale=x_scale))])

    # What the kernels take at every call goes to the device once, in one call: a
    # host array is transferred again at each call (about 2 us each, measured), and
    # jax.device_put costs some 10 us per array more than a call's own transfer.
    x, limits, skip_gtol, skip_last, reuse_fac, factor_j = jax.device_put((
        x0.astype(dtype),
        Limits(np.asarray(max_nfev, np.int32), np.asarray(ftol, dtype), np.asarray(xtol, dtype),
               np.asarray(gtol, dtype)),
        np.asarray(gtol, dtype),
        np.asarray(np.inf, dtype),
        np.asarray(True),
        np.asarray(False),
    ))
    # Passed once, to the first factorization: the starting scales, and try the Gram
    # path; the rest only gives shapes (host arrays: the call transfers them).
    k = min(n, objective.dim_f)
    unfactored = Factorization(
        s=np.zeros(k, dtype), V=np.zeros((n, k), dtype), suf=np.zeros(k, dtype), grad=np.zeros(n, dtype),
        scale_inv=scale_inv.astype(dtype), full_rank=np.asarray(False), g_norm=np.asarray(0, dtype),
        gram=np.asarray(True), gn=np.zeros(n, dtype),
    )

    def jacobian(x: Any) -> Any:
        if plan.num_devices == 1:
            return jacobian_kernel(x, data)
        # x uncommitted, so the sharded kernel places it as when warmed; J gathered,
        # so the iterate kernel sees one device, as warmed.
        return np.asarray(jacobian_kernel(np.asarray(x), data))

    f = residual_kernel(x, data)
    f_host = np.asarray(f, dtype=np.float64)
    if not np.all(np.isfinite(f_host)):
        raise ValueError("residuals are not finite at x0")
    point = Point(x, f, np.asarray(0.5 * (f_host @ f_host), dtype))
    nfev = 1
    J = jacobian(x)
    njev = 1
    # fac.gram feeds the next factorization's try_gram: once rejected, the Gram path
    # is not tried again in this solve (and no host round trip decides it).
    fac = unfactored
    del unfactored
    Delta, alpha, nfev_dev = np.asarray(0, dtype), np.asarray(0, dtype), np.asarray(nfev, np.int32)
    status: int | None = None
    iteration = 0
    step_norm = 0.0
    while True:
        ends = status is not None or nfev >= max_nfev
        if per_iteration_host or ends:
            # Factor only (no trial: max_nfev = nfev), to read the gradient here first:
            # gtol wins over ftol/xtol (as in scipy), and a callback may stop the solve.
            # At the solve's last point only the gradient is needed (skip_last).
            trial, fac = iterate_kernel(J, point, fac, Delta, alpha, nfev_dev, limits._replace(max_nfev=nfev_dev),
                                        data, skip_last if ends else skip_gtol, factor_j)
            Delta = trial.Delta
            g_norm = float(fac.g_norm)
            if g_norm < gtol:
                status = 1
            if verbose == 2 and iteration > 0:
                logger.log(_log_level, "iter %4d  nfev %4d  cost %.6e  step %.3e  optimality %.3e",
                           iteration, nfev, float(point.cost), step_norm, g_norm)
            if callback is not None and iteration > 0 and status is None:
                info = IterationInfo(iteration, np.asarray(point.x), float(point.cost), g_norm, step_norm, nfev, njev)
                try:
                    stop = callback(info)
                except StopIteration:
                    stop = True
                if stop is True:
                    status = -2
            if status is not None or nfev >= max_nfev:
                break
            trial, fac = iterate_kernel(J, point, fac, Delta, alpha, nfev_dev, limits, data, skip_gtol, reuse_fac)
        else:
            trial, fac = iterate_kernel(J, point, fac, Delta, alpha, nfev_dev, limits, data, skip_gtol, factor_j)
        del J  # the Jacobian is not needed past its factorization
        Delta, alpha, nfev_dev = trial.Delta, trial.alpha, trial.nfev
        new_nfev, code, accepted = np.asarray(trial.report).tolist()
        status = code or None
        if new_nfev == nfev and status is None:
            # The kernel made no trial and gave no reason: never loop on it forever.
            raise SolverError(
                "the iterate kernel returned without evaluating a trial step; its executable is wrong "
                "(seen with jax 0.6.0 loading it from the persistent compilation cache)"
            )
        nfev = new_nfev
        if status == 1:  # gtol held at the current point; no trial was made
            break
        if per_iteration_host:
            step_norm = float(trial.step_norm)
        iteration += 1
        if not accepted:
            break  # trials end without an accepted step only when the solve ends
        point = trial.point
        J = jacobian(point.x)
        njev += 1
    g_norm, cost = jax.device_get((fac.g_norm, point.cost))
    result = LeastSquaresResult(
        x=np.asarray(point.x),
        cost=float(cost),
        fun=np.asarray(point.f),
        grad=np.asarray(fac.grad),
        optimality=float(g_norm),
        nfev=nfev,
        njev=njev,
        nit=iteration,
        status=0 if status is None else status,
        jac_chunk_sizes=objective.jac_chunk_sizes,
        seconds=time.perf_counter() - start,
    )
    if verbose:
        logger.log(_log_level, "%s Cost %.4e, optimality %.2e, nfev %d, njev %d.",
                   result.message, result.cost, result.optimality, nfev, njev)
    return result


def _verbose_logging(verbose: int) -> int:
    """Makes verbose output visible: a stderr handler on ``solver`` if none is configured."""
    if not verbose:
        return logging.INFO
    root = logging.getLogger("solver")
    if not root.hasHandlers():
        root.addHandler(logging.StreamHandler())
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    return logging.INFO
