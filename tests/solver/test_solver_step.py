"""The per-iteration linear algebra: both factorization paths and the trust-region step
against scipy's own subproblem solver."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.optimize._lsq.common import solve_lsq_trust_region

from solver.step import lsq_factor, trust_region_step

_factor = jax.jit(lsq_factor, static_argnames=("jac_scale",))
_step = jax.jit(trust_region_step)
NEVER = np.asarray(0.0)  # skip_below: always factor


def _problem(m: int, n: int, cond: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(m * 1000 + n)
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.geomspace(1.0, 1.0 / cond, n)
    return (U * s) @ V.T, rng.standard_normal(m)


def _reference(J: np.ndarray, f: np.ndarray, Delta: float) -> np.ndarray:
    U, s, Vt = np.linalg.svd(J, full_matrices=False)
    p, _, _ = solve_lsq_trust_region(J.shape[1], J.shape[0], U.T @ f, s, Vt.T, Delta)
    return p


@pytest.mark.parametrize(("m", "n"), [(40, 8), (8, 8), (200, 12)])
@pytest.mark.parametrize("try_gram", [True, False])
def test_both_paths_match_scipy_trust_region_step(m: int, n: int, try_gram: bool) -> None:
    J, f = _problem(m, n)
    fac = _factor(J, f, np.ones(n), np.asarray(try_gram), NEVER, jac_scale=False)
    assert bool(fac.gram) == try_gram  # well conditioned: the Gram path is taken when tried
    np.testing.assert_allclose(fac.s, np.linalg.svd(J, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose(fac.grad, f @ J, rtol=1e-12)
    assert float(fac.g_norm) == pytest.approx(np.abs(f @ J).max())
    for Delta in (100.0, 0.3, 1e-3):  # Gauss-Newton, then ever more damped steps
        st = _step(fac, np.asarray(Delta), np.asarray(0.0))
        np.testing.assert_allclose(st.step, _reference(J, f, Delta), rtol=1e-6, atol=1e-12)
        p = np.asarray(st.step)
        expected = -(0.5 * np.sum((J @ p) ** 2) + (J.T @ f) @ p)
        np.testing.assert_allclose(st.predicted_reduction, expected, rtol=1e-10)


def test_ill_conditioned_jacobian_falls_back_to_svd() -> None:
    J, f = _problem(40, 8, cond=1e7)
    fac = _factor(J, f, np.ones(8), np.asarray(True), NEVER, jac_scale=False)
    assert not bool(fac.gram)
    np.testing.assert_allclose(fac.s, np.linalg.svd(J, compute_uv=False), rtol=1e-9)
    st = _step(fac, np.asarray(100.0), np.asarray(0.0))
    np.testing.assert_allclose(st.step, _reference(J, f, 100.0), rtol=1e-6)


def test_gram_path_gauss_newton_step_is_refined_to_svd_accuracy() -> None:
    # kappa**2 (m + n) eps = 1/30: inside the Gram path's gate, where the normal
    # equations alone lose digits that the refinement against J restores.
    m, n = 200, 50
    J, f = _problem(m, n, cond=(1 / (30 * (m + n) * np.finfo(float).eps)) ** 0.5)
    fac = _factor(J, f, np.ones(n), np.asarray(True), NEVER, jac_scale=False)
    assert bool(fac.gram) and bool(fac.full_rank)
    exact = np.linalg.lstsq(J, -f, rcond=None)[0]
    unrefined = -np.asarray(fac.V) @ (np.asarray(fac.suf) / np.asarray(fac.s) ** 2)
    refined_error = np.linalg.norm(np.asarray(fac.gn) - exact) / np.linalg.norm(exact)
    unrefined_error = np.linalg.norm(unrefined - exact) / np.linalg.norm(exact)
    assert refined_error < 1e-9 < unrefined_error
    st = _step(fac, np.asarray(10 * np.linalg.norm(exact)), np.asarray(0.0))
    assert float(st.alpha) == 0.0  # the Gauss-Newton step fits: it is the refined one
    assert np.linalg.norm(np.asarray(st.step) - exact) < 1e-9 * np.linalg.norm(exact)


def test_badly_scaled_columns_skip_the_gram_path() -> None:
    J, f = _problem(40, 8)
    J = J * np.geomspace(1.0, 1e-8, 8)  # column norms alone show kappa >= 1e8
    fac = _factor(J, f, np.ones(8), np.asarray(True), NEVER, jac_scale=False)
    assert not bool(fac.gram)
    norms = np.linalg.norm(J, axis=0)
    fac = _factor(J, f, norms, np.asarray(True), NEVER, jac_scale=False)  # d = 1 / norms
    assert bool(fac.gram)  # the same J with its columns scaled back is well conditioned
    st = _step(fac, np.asarray(100.0), np.asarray(0.0))
    Jh = J / norms
    np.testing.assert_allclose(st.step, _reference(Jh, f, 100.0), rtol=1e-6)


def test_wide_jacobian_is_rank_deficient() -> None:
    J, f = _problem(8, 8)
    J = J[:5]
    fac = _factor(J, f[:5], np.ones(8), np.asarray(True), NEVER, jac_scale=False)
    assert not bool(fac.gram) and not bool(fac.full_rank)
    assert fac.V.shape == (8, 5)
    st = _step(fac, np.asarray(0.5), np.asarray(0.0))
    np.testing.assert_allclose(st.step, _reference(J, f[:5], 0.5), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(("m", "n"), [(40, 8), (5, 8)])
def test_a_point_where_the_solve_ends_skips_the_factorization(m: int, n: int) -> None:
    J, f = _problem(max(m, n), n)
    J, f = J[:m], f[:m]
    g_norm = np.abs(f @ J).max()
    for skip_below in (np.inf, 2 * g_norm):  # the solve ends anyway / gtol holds here
        fac = _factor(J, f, np.ones(n), np.asarray(True), np.asarray(skip_below), jac_scale=False)
        assert not np.any(fac.s) and not np.any(fac.V) and not np.any(fac.suf)
        np.testing.assert_allclose(fac.grad, f @ J, rtol=1e-12)  # what gtol and the result need
        assert float(fac.g_norm) == pytest.approx(g_norm)
        assert bool(fac.gram)  # the Gram flag passes through untouched
    fac = _factor(J, f, np.ones(n), np.asarray(True), np.asarray(0.5 * g_norm), jac_scale=False)
    np.testing.assert_allclose(fac.s, np.linalg.svd(J, compute_uv=False), rtol=1e-9)

