"""least_squares reaches known minima and agrees with scipy's trf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import solver
from solver.jacobian import lsq_residual
from solver_mgh import PROBLEMS


def _scipy(objective: solver.ObjectiveFunction, x0: np.ndarray, **kwargs: object):
    objective.build(x0)
    fun = jax.jit(lambda y: lsq_residual(y, objective.data, spec=objective.spec))
    jac = jax.jit(jax.jacfwd(lambda y: lsq_residual(y, objective.data, spec=objective.spec)))
    return scipy.optimize.least_squares(
        lambda y: np.asarray(fun(y)), x0, jac=lambda y: np.asarray(jac(jnp.asarray(y))),
        method="trf", **kwargs,
    )


def test_rosenbrock_reaches_minimum_like_scipy() -> None:
    objective, x0 = solver.problems.get("rosenbrock", 10, jac_chunk_size=3)
    result = solver.least_squares(objective, x0)
    assert result.success and result.status in (1, 2, 3, 4)
    assert result.cost < 1e-20
    np.testing.assert_allclose(result.x, np.ones(10), atol=1e-10)
    reference = _scipy(objective, x0)
    assert (result.nfev, result.njev, result.status) == (reference.nfev, reference.njev, reference.status)
    assert result.message == reference.message
    np.testing.assert_allclose(result.optimality, np.abs(result.grad).max())


def test_bratu_reaches_zero_residual() -> None:
    objective, x0 = solver.problems.get("bratu", 6, jac_chunk_size=7)
    result = solver.least_squares(objective, x0)
    assert result.success
    assert result.cost < 1e-20
    assert np.all(result.x > 0)  # the lower Bratu branch is positive inside the square
    assert result.fun.shape == (36,) and result.grad.shape == (36,)


@pytest.mark.parametrize("x_scale", [1.0, "jac"])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_matches_scipy_on_mgh_problems(name: str, x_scale: object) -> None:
    fn, params, x0 = PROBLEMS[name]
    x0 = np.asarray(x0, dtype=np.float64)
    dim_f = jax.eval_shape(fn, jax.ShapeDtypeStruct(x0.shape, np.float64), params).shape[0]
    objective = solver.ObjectiveFunction(solver.Objective(fn, dim_f, params=params), jac_chunk_size=3)
    result = solver.least_squares(objective, x0, x_scale=x_scale)
    reference = _scipy(objective, x0, x_scale=x_scale)
    assert result.status == reference.status
    np.testing.assert_allclose(result.cost, reference.cost, rtol=1e-6, atol=1e-14)


def test_curvefit_blocked_matches_scipy() -> None:
    objective, x0 = solver.problems.get("curvefit", 3, deriv_mode="blocked", jac_chunk_size=4)
    result = solver.least_squares(objective, x0)
    reference = _scipy(objective, x0)
    np.testing.assert_allclose(result.cost, reference.cost, rtol=1e-10)
    assert result.jac_chunk_sizes == (4, 4)


def test_max_nfev_gives_status_0() -> None:
    objective, x0 = solver.problems.get("rosenbrock", 4)
    result = solver.least_squares(objective, x0, max_nfev=3)
    assert (result.status, result.success, result.nfev) == (0, False, 3)
    assert "maximum number of function evaluations" in result.message


def test_callback_sees_iterations_and_can_stop() -> None:
    objective, x0 = solver.problems.get("rosenbrock", 4)
    seen: list[solver.IterationInfo] = []

    def callback(info: solver.IterationInfo) -> bool:
        seen.append(info)
        return info.iteration >= 2

    result = solver.least_squares(objective, x0, callback=callback)
    assert result.status == -2 and not result.success
    assert [i.iteration for i in seen] == [1, 2]
    assert seen[-1].cost == result.cost


def test_a_callback_changes_nothing_and_sees_each_new_points_gradient() -> None:
    # With a callback each iteration is a factor-only call, then a trials-only one.
    objective, x0 = solver.problems.get("curvefit", 3)
    seen: list[solver.IterationInfo] = []
    plain = solver.least_squares(objective, x0)
    watched = solver.least_squares(objective, x0, callback=seen.append)
    assert (watched.nfev, watched.njev, watched.status) == (plain.nfev, plain.njev, plain.status)
    np.testing.assert_array_equal(watched.x, plain.x)
    assert len(seen) >= 2
    jac = jax.jacfwd(lambda y: lsq_residual(y, objective.data, spec=objective.spec))
    for info in seen:
        x = jnp.asarray(info.x)
        g = np.asarray(jac(x)).T @ np.asarray(lsq_residual(x, objective.data, spec=objective.spec))
        assert info.optimality == pytest.approx(np.abs(g).max(), rel=1e-4)


def test_float32_solve() -> None:
    objective, x0 = solver.problems.get("bratu", 4)
    result = solver.least_squares(objective, x0.astype(np.float32))
    assert objective.dtype == np.float32 and result.x.dtype == np.float32
    assert result.success and result.cost < 1e-8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ftol": -1.0}, "ftol=-1.0"),
        ({"ftol": 0.0, "xtol": 0.0, "gtol": 0.0}, "at least one of"),
        ({"max_nfev": 0}, "max_nfev=0"),
        ({"x_scale": "auto"}, "x_scale="),
        ({"x_scale": -1.0}, "x_scale must be"),
        ({"verbose": 3}, "verbose=3"),
        ({"callback": 1}, "callback must be callable"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, object], match: str) -> None:
    objective, x0 = solver.problems.get("rosenbrock", 2)
    with pytest.raises(ValueError, match=match):
        solver.least_squares(objective, x0, **kwargs)


def test_bad_x0_raises() -> None:
    objective, x0 = solver.problems.get("rosenbrock", 2)
    with pytest.raises(ValueError, match="1-D"):
        solver.least_squares(objective, np.ones((2, 1)))
    with pytest.raises(ValueError, match="finite"):
        solver.least_squares(objective, np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"returned shape \(4,\), expected \(2,\)"):
        solver.least_squares(objective, np.ones(4))


def test_verbose_logs(caplog: pytest.LogCaptureFixture) -> None:
    objective, x0 = solver.problems.get("rosenbrock", 2)
    with caplog.at_level("INFO", logger="solver"):
        solver.least_squares(objective, x0, verbose=2)
    messages = [r.getMessage() for r in caplog.records if r.name == "solver.lsq"]
    assert any(m.startswith("iter") for m in messages)
    assert "termination condition" in messages[-1]
