"""`least_squares`: a scaled trust-region Levenberg-Marquardt method (no bounds).

The outer loop follows scipy's ``trf`` without bounds (and MINPACK's LM): per
iteration one factorization of the scaled Jacobian (`solver.step.lsq_factor`),
then as many trial radii as needed solved from it, each trial costing one
residual evaluation, all inside one kernel (`solver.trial.lsq_step`, which
also checks ``gtol``). The host loop dispatches the Jacobian, factor and step
kernels and reads one vector of three ints per iteration to decide whether
to go on (a callback or ``verbose=2`` adds one read); iterates, residuals and
factorizations stay on the device and run only in the four module-level
kernels of `solver.kernels`, so a warmed persistent cache covers the whole
solve and no other computation is compiled.
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
    lsq_factor_jit,
    lsq_jacobian_jit,
    lsq_residual_jit,
    lsq_step_jit,
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
    factor_kernel = bound(lsq_factor_jit, jac_scale=jac_scale)
    step_kernel = bound(lsq_step_jit, spec=spec)
    in_use = (residual_kernel, jacobian_kernel, factor_kernel, step_kernel)
    if any(isinstance(kernel, BoundKernel) for kernel in in_use):
        # Load all four from the executable store side by side.
        prefetch([(kernel, k.args) for kernel, k in zip(in_use, kernels(objective, x0, x_scale=x_scale))])

    # What the kernels take at every call goes to the device once, in one call: a
    # host array is transferred again at each call (about 2 us each, measured), and
    # each device_put costs tens of microseconds. The factorization is skipped where
    # the solve ends: gtol holds (skip_gtol), or it ends anyway (skip_last, inf).
    x, scale_arg, limits, skip_gtol, skip_last, try_gram = jax.device_put((
        x0.astype(dtype),
        scale_inv.astype(dtype),
        Limits(np.asarray(max_nfev, np.int32), np.asarray(ftol, dtype), np.asarray(xtol, dtype),
               np.asarray(gtol, dtype)),
        np.asarray(gtol, dtype),
        np.asarray(np.inf, dtype),
        np.asarray(True),
    ))

    def factor(x: Any, f: Any, scale_inv: Any, try_gram: Any, last: bool = False) -> Factorization:
        if plan.num_devices > 1:
            x = np.asarray(x)  # uncommitted, so the sharded kernel places it as when warmed
        J = jacobian_kernel(x, data)
        if plan.num_devices > 1:
            J = np.asarray(J)  # gathered, so the factor kernel sees one device, as warmed
        fac = factor_kernel(J, f, scale_inv, try_gram, skip_last if last else skip_gtol)
        del J  # the Jacobian is not needed past its factorization
        return fac

    f = residual_kernel(x, data)
    f_host = np.asarray(f, dtype=np.float64)
    if not np.all(np.isfinite(f_host)):
        raise ValueError("residuals are not finite at x0")
    point = Point(x, f, np.asarray(0.5 * (f_host @ f_host), dtype))
    nfev = 1
    # fac.gram feeds the next factorization's try_gram: once rejected, the Gram
    # path is not tried again in this solve (and no host round trip decides it).
    fac = factor(x, f, scale_arg, try_gram)
    njev = 1
    # Only x_scale="jac" needs the factorization's scales here (a wait for it).
    scale0 = np.asarray(fac.scale_inv if jac_scale else scale_inv.astype(dtype), dtype=np.float64)
    Delta = np.asarray(float(np.linalg.norm(np.asarray(x0, np.float64) * scale0)) or 1.0, dtype)
    alpha = np.asarray(0.0, dtype)
    nfev_dev = np.asarray(nfev, np.int32)
    status: int | None = None
    iteration = 0
    step_norm = 0.0
    while True:
        # gtol is checked inside the step kernel, so a plain solve reads the
        # device once per iteration; a callback or verbose=2 needs more, and
        # the last iteration too, as gtol wins over ftol/xtol (as in scipy).
        if per_iteration_host or status is not None or nfev >= max_nfev:
            g_norm = float(fac.g_norm)
            if g_norm < gtol:
                status = 1
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
        trial = step_kernel(point, fac, Delta, alpha, nfev_dev, limits, data)
        Delta, alpha, nfev_dev = trial.Delta, trial.alpha, trial.nfev
        new_nfev, code, accepted = np.asarray(trial.report).tolist()
        status = code or None
        if new_nfev == nfev and status is None:
            # The kernel made no trial and gave no reason: never loop on it forever.
            raise SolverError(
                "the step kernel returned without evaluating a trial step; its executable is wrong "
                "(seen with jax 0.6.0 loading it from the persistent compilation cache)"
            )
        nfev = new_nfev
        if status == 1:  # gtol held at the current point; no trial was made
            break
        if per_iteration_host:
            step_norm = float(trial.step_norm)
        if accepted:
            point = trial.point
            # At the solve's last point only the gradient is needed (gtol and the result);
            # the loop ends below without calling back or stepping again.
            last = status is not None or nfev >= max_nfev
            fac = factor(point.x, point.f, fac.scale_inv if jac_scale else scale_arg, fac.gram, last)
            njev += 1
        else:
            step_norm = 0.0
        iteration += 1
        if verbose == 2:
            logger.log(_log_level, "iter %4d  nfev %4d  cost %.6e  step %.3e  optimality %.3e",
                       iteration, nfev, float(point.cost), step_norm, float(fac.g_norm))
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
