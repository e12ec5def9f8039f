"""`least_squares`: a scaled trust-region Levenberg-Marquardt method (no bounds).

The outer loop follows scipy's ``trf`` without bounds (and MINPACK's LM): per
iteration one SVD of the scaled Jacobian (`solver.step.lsq_factor`), then as
many trial radii as needed solved from that one factorization
(`solver.step.lsq_step`), each trial costing one residual evaluation. The
loop itself is host-side NumPy on scalars and vectors; everything of size
``m x n`` stays on the device and runs in the four module-level kernels of
`solver.kernels`, so a warmed persistent cache covers the whole solve.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from solver.kernels import lsq_factor_jit, lsq_jacobian_jit, lsq_residual_jit, lsq_step_jit
from solver.objective import Objective, ObjectiveFunction
from solver.result import LeastSquaresResult

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


def _update_radius(
    Delta: float, actual: float, predicted: float, step_norm: float, bound_hit: bool
) -> tuple[float, float]:
    if predicted > 0:
        ratio = actual / predicted
    elif predicted == actual == 0:
        ratio = 1.0
    else:
        ratio = 0.0
    if ratio < 0.25:
        Delta = 0.25 * step_norm
    elif ratio > 0.75 and bound_hit:
        Delta *= 2.0
    return Delta, ratio


def _termination(
    dF: float, F: float, dx_norm: float, x_norm: float, ratio: float, ftol: float, xtol: float
) -> int | None:
    f_ok = dF < ftol * F and ratio > 0.25
    x_ok = dx_norm < xtol * (xtol + x_norm)
    if f_ok and x_ok:
        return 4
    if f_ok:
        return 2
    if x_ok:
        return 3
    return None


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

    def residual(x: np.ndarray) -> tuple[Any, np.ndarray]:
        f_dev = lsq_residual_jit(x, data, spec=spec)
        return f_dev, np.asarray(f_dev, dtype=np.float64)

    def factor(x: np.ndarray, f_dev: Any, scale_inv: np.ndarray) -> Any:
        J = lsq_jacobian_jit(x, data, spec=spec, plan=plan)
        if plan.num_devices > 1:
            J = np.asarray(J)  # gathered, so the factor kernel sees one device, as warmed
        fac = lsq_factor_jit(J, f_dev, scale_inv.astype(dtype), jac_scale=jac_scale)
        del J  # the Jacobian is not needed past its factorization
        return fac

    x = x0.astype(dtype)
    f_dev, f = residual(x)
    nfev = 1
    if not np.all(np.isfinite(f)):
        raise ValueError("residuals are not finite at x0")
    fac = factor(x, f_dev, scale_inv)
    njev = 1
    scale_inv = np.asarray(fac.scale_inv, dtype=np.float64)
    cost = 0.5 * float(f @ f)
    Delta = float(np.linalg.norm(x0 * scale_inv)) or 1.0
    alpha = 0.0
    status: int | None = None
    iteration = 0
    step_norm = 0.0
    while True:
        g = np.asarray(fac.grad, dtype=np.float64)
        g_norm = float(np.max(np.abs(g)))
        if g_norm < gtol:
            status = 1
        if callback is not None and iteration > 0 and status is None:
            info = IterationInfo(iteration, x.copy(), cost, g_norm, step_norm, nfev, njev)
            try:
                stop = callback(info)
            except StopIteration:
                stop = True
            if stop is True:
                status = -2
        if status is not None or nfev >= max_nfev:
            break
        d = 1 / scale_inv
        actual = -1.0
        while actual <= 0 and nfev < max_nfev:
            st = lsq_step_jit(
                fac.s, fac.V, fac.uf, fac.full_rank,
                np.asarray(Delta, dtype), np.asarray(alpha, dtype),
            )
            step_h = np.asarray(st.step, dtype=np.float64)
            alpha = float(st.alpha)
            predicted = float(st.predicted_reduction)
            step = d * step_h
            x_new = (x + step).astype(dtype)
            f_new_dev, f_new = residual(x_new)
            nfev += 1
            step_h_norm = float(np.linalg.norm(step_h))
            if not np.all(np.isfinite(f_new)):
                Delta = 0.25 * step_h_norm
                continue
            cost_new = 0.5 * float(f_new @ f_new)
            actual = cost - cost_new
            Delta_new, ratio = _update_radius(Delta, actual, predicted, step_h_norm, step_h_norm > 0.95 * Delta)
            step_norm = float(np.linalg.norm(step))
            status = _termination(actual, cost, step_norm, float(np.linalg.norm(x)), ratio, ftol, xtol)
            if status is not None:
                break
            alpha *= Delta / Delta_new
            Delta = Delta_new
        if actual > 0:
            x, f_dev, f, cost = x_new, f_new_dev, f_new, cost_new
            del fac
            fac = factor(x, f_dev, scale_inv)
            njev += 1
            if jac_scale:
                scale_inv = np.asarray(fac.scale_inv, dtype=np.float64)
        else:
            step_norm = 0.0
        iteration += 1
        if verbose == 2:
            logger.log(_log_level, "iter %4d  nfev %4d  cost %.6e  step %.3e  optimality %.3e",
                       iteration, nfev, cost, step_norm, g_norm)
    result = LeastSquaresResult(
        x=x,
        cost=cost,
        fun=np.asarray(f_dev),
        grad=np.asarray(fac.grad),
        optimality=g_norm,
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
