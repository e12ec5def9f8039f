"""Pure linear algebra of one Levenberg-Marquardt iteration.

`lsq_factor` takes the SVD of the scaled Jacobian ``J_h = J * d`` once per
iteration; `lsq_step` then solves the trust-region subproblem

    minimize 0.5 * ||J_h p + f||^2  subject to  ||p|| <= Delta

for any radius ``Delta`` from that factorization alone (Moré's 1978
Levenberg-Marquardt parameter iteration on the secular equation
``||p(alpha)|| = Delta``), so rejected trial steps never refactorize
``[J_h; sqrt(alpha) I]``. Both are traced by `solver.kernels`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Factorization", "TrustStep", "lsq_factor", "lsq_step"]

_NEWTON_ITERATIONS = 10
_NEWTON_RTOL = 0.01


class Factorization(NamedTuple):
    """SVD of the scaled Jacobian and the quantities derived from the same J.

    Attributes:
        s: Singular values ``(k,)``, ``k = min(m, n)``, descending.
        V: Right singular vectors ``(n, k)``.
        uf: ``U.T @ f`` ``(k,)``.
        grad: Unscaled gradient ``J.T @ f`` ``(n,)``.
        scale_inv: Column scales in use (``1 / d``) ``(n,)``.
        full_rank: Whether ``m >= n`` and ``J_h`` is numerically full rank.
    """

    s: jax.Array
    V: jax.Array
    uf: jax.Array
    grad: jax.Array
    scale_inv: jax.Array
    full_rank: jax.Array


class TrustStep(NamedTuple):
    """A trust-region step in scaled variables.

    Attributes:
        step: ``p_h`` ``(n,)``; the step in ``x`` is ``d * p_h``.
        alpha: Levenberg-Marquardt parameter that produced it (0: Gauss-Newton).
        predicted_reduction: ``-(0.5 ||J_h p_h||^2 + g_h . p_h)``.
        iterations: Newton iterations on the secular equation.
    """

    step: jax.Array
    alpha: jax.Array
    predicted_reduction: jax.Array
    iterations: jax.Array


def lsq_factor(
    J: jax.Array, f: jax.Array, scale_inv: jax.Array, *, jac_scale: bool
) -> Factorization:
    """Factors ``J * d`` once; with ``jac_scale`` the scales come from J's column norms.

    Args:
        J: Jacobian ``(m, n)``.
        f: Residuals ``(m,)``.
        scale_inv: ``1 / d``; with ``jac_scale``, the previous iteration's
            scales (zeros at the first), which the new norms may only raise.
        jac_scale: Whether ``x_scale="jac"``.
    """
    m, n = J.shape
    if jac_scale:
        norms = jnp.sqrt(jnp.sum(J * J, axis=0))
        norms = jnp.where(norms == 0, jnp.ones_like(norms), norms)
        scale_inv = jnp.maximum(norms, scale_inv)
    d = 1 / scale_inv
    U, s, Vt = jnp.linalg.svd(J * d[None, :], full_matrices=False)
    uf = f @ U
    grad = f @ J
    full_rank = (m >= n) & (s[-1] > jnp.finfo(J.dtype).eps * m * s[0])
    return Factorization(s, Vt.T, uf, grad, scale_inv, full_rank)


def lsq_step(
    s: jax.Array,
    V: jax.Array,
    uf: jax.Array,
    full_rank: jax.Array,
    Delta: jax.Array,
    alpha: jax.Array,
) -> TrustStep:
    """Solves the trust-region subproblem for radius ``Delta`` from an SVD.

    Args:
        s, V, uf, full_rank: From `lsq_factor`.
        Delta: Trust-region radius (scaled variables), a 0-d array.
        alpha: Starting Levenberg-Marquardt parameter (the last one used).
    """
    dtype = s.dtype
    suf = s * uf
    safe_s = jnp.where(s > 0, s, jnp.ones_like(s))
    p_gn = -V @ jnp.where(full_rank, uf / safe_s, jnp.zeros_like(uf))
    gauss_newton = full_rank & (jnp.linalg.norm(p_gn) <= Delta)

    def phi_and_slope(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        denom = s**2 + a
        p_norm = jnp.linalg.norm(suf / denom)
        safe_norm = jnp.where(p_norm > 0, p_norm, jnp.ones_like(p_norm))
        return p_norm - Delta, -jnp.sum(suf**2 / denom**3) / safe_norm

    zero = jnp.zeros((), dtype)
    upper = jnp.linalg.norm(suf) / Delta
    phi0, slope0 = phi_and_slope(jnp.where(full_rank, zero, jnp.ones((), dtype)))
    lower = jnp.where(full_rank, -phi0 / jnp.where(slope0 != 0, slope0, -jnp.ones_like(slope0)), zero)

    def restart(lo: jax.Array, up: jax.Array) -> jax.Array:
        return jnp.maximum(1e-3 * up, jnp.sqrt(lo * up))

    alpha = jnp.where(~full_rank & (alpha == 0), restart(lower, upper), alpha)

    def cond(state: tuple[jax.Array, ...]) -> jax.Array:
        it, _, _, _, done = state
        return (it < _NEWTON_ITERATIONS) & ~done

    def body(state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        it, a, lo, up, _ = state
        a = jnp.where((a < lo) | (a > up), restart(lo, up), a)
        phi, slope = phi_and_slope(a)
        up = jnp.where(phi < 0, a, up)
        ratio = phi / jnp.where(slope != 0, slope, -jnp.ones_like(slope))
        lo = jnp.maximum(lo, a - ratio)
        a = a - (phi + Delta) * ratio / Delta
        return it + 1, a, lo, up, jnp.abs(phi) < _NEWTON_RTOL * Delta

    init = (jnp.zeros((), jnp.int32), alpha, lower, upper, gauss_newton)
    iterations, alpha, _, _, _ = jax.lax.while_loop(cond, body, init)
    p = -V @ (suf / (s**2 + alpha))
    p_norm = jnp.linalg.norm(p)
    p = p * (Delta / jnp.where(p_norm > 0, p_norm, jnp.ones_like(p_norm)))
    step = jnp.where(gauss_newton, p_gn, p)
    alpha = jnp.where(gauss_newton, zero, alpha)
    iterations = jnp.where(gauss_newton, jnp.zeros_like(iterations), iterations)
    vp = V.T @ step
    predicted = -(0.5 * jnp.sum((s * vp) ** 2) + jnp.dot(suf, vp))
    return TrustStep(step, alpha, predicted, iterations)
