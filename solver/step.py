"""Pure linear algebra of one Levenberg-Marquardt iteration.

`lsq_factor` factors the scaled Jacobian ``J_h = J * d`` once per iteration
into what every trial step needs: singular values ``s``, right singular
vectors ``V`` and ``V.T @ g_h`` (``g_h = J_h.T f``). `trust_region_step` then
solves

    minimize 0.5 * ||J_h p + f||^2  subject to  ||p|| <= Delta

for any radius ``Delta`` from those alone (Moré's 1978 Levenberg-Marquardt
parameter iteration on the secular equation ``||p(alpha)|| = Delta``), so
rejected trial steps never refactorize ``[J_h; sqrt(alpha) I]``.

Two ways to the same factorization, chosen inside the kernel:

* **Gram (fast).** When ``m >= n``, the eigendecomposition of the ``n x n``
  Gram matrix ``J_h.T J_h = V diag(s**2) V.T`` costs 2-4x less than an SVD
  of ``J_h`` (no ``U``, a symmetric eigensolver) but squares the condition
  number. It is used only when ``s_min**2 >= GRAM_RCOND_FACTOR * (m + n) *
  eps * s_max**2``, i.e. when the error bound of the smallest eigenvalue
  (about ``(m + n) eps kappa**2`` relative) is below ``1 / GRAM_RCOND_FACTOR``;
  squared column norms that already spread wider than that skip the
  eigendecomposition. Damped steps only need ``||p(alpha)||`` to 1%, which
  that bound gives; the Gauss-Newton step, which decides the final digits,
  is refined against ``J_h`` itself (corrected semi-normal equations, two
  sweeps of two matrix-vector products each), which brings it to the SVD's
  accuracy (measured: from 5e-6 to 2e-11 relative at the bound).
* **SVD (robust).** Otherwise, the SVD of ``J_h`` (of its ``R`` factor when
  ``J_h`` is tall, which skips forming the ``m x n`` ``U``), as scipy's
  ``trf`` does. ``U`` is never needed: ``s * U.T f = V.T g_h``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["GRAM_RCOND_FACTOR", "Factorization", "TrustStep", "lsq_factor", "trust_region_step"]

GRAM_RCOND_FACTOR = 10.0
"""The Gram path is taken when its smallest eigenvalue is accurate to about 10%."""
_REFINE_SWEEPS = 2
_NEWTON_ITERATIONS = 10
_NEWTON_RTOL = 0.01


class Factorization(NamedTuple):
    """A factorization of the scaled Jacobian and what the same J gives.

    Attributes:
        s: Singular values ``(k,)``, ``k = min(m, n)``, descending.
        V: Right singular vectors ``(n, k)``.
        suf: ``V.T @ g_h`` ``(k,)`` (equals ``s * U.T @ f``).
        grad: Unscaled gradient ``J.T @ f`` ``(n,)``.
        scale_inv: Column scales in use (``1 / d``) ``(n,)``.
        full_rank: Whether ``m >= n`` and ``J_h`` is numerically full rank.
        g_norm: ``max |grad|``, the first-order optimality.
        gram: Whether the Gram path produced it (else the SVD).
        gn: The Gauss-Newton step ``argmin ||J_h p + f||`` in scaled
            variables ``(n,)``, refined against ``J_h``; zeros unless ``full_rank``.
    """

    s: jax.Array
    V: jax.Array
    suf: jax.Array
    grad: jax.Array
    scale_inv: jax.Array
    full_rank: jax.Array
    g_norm: jax.Array
    gram: jax.Array
    gn: jax.Array


class TrustStep(NamedTuple):
    """A trust-region step in scaled variables.

    Attributes:
        step: ``p_h`` ``(n,)``; the step in ``x`` is ``d * p_h``.
        alpha: Levenberg-Marquardt parameter that produced it (0: Gauss-Newton).
        predicted_reduction: ``-(0.5 ||J_h p_h||^2 + g_h . p_h)``.
    """

    step: jax.Array
    alpha: jax.Array
    predicted_reduction: jax.Array


def _svd_factor(Jh: jax.Array) -> tuple[jax.Array, jax.Array]:
    m, n = Jh.shape
    # A tall J_h: its R factor has the same s and V, and no m x n U is formed.
    A = jnp.linalg.qr(Jh, mode="r") if m >= 2 * n else Jh
    _, s, Vt = jnp.linalg.svd(A, full_matrices=False)
    return s, Vt.T


def lsq_factor(
    J: jax.Array, f: jax.Array, scale_inv: jax.Array, try_gram: jax.Array, skip_below: jax.Array, *,
    jac_scale: bool,
) -> Factorization:
    """Factors ``J * d`` once; with ``jac_scale`` the scales come from J's column norms.

    Args:
        J: Jacobian ``(m, n)``.
        f: Residuals ``(m,)``.
        scale_inv: ``1 / d``; with ``jac_scale``, the previous iteration's
            scales (zeros at the first), which the new norms may only raise.
        try_gram: 0-d bool; whether to try the Gram path first (the caller
            stops trying once it was rejected, to not pay for it twice).
        skip_below: 0-d float; when ``max |J.T f|`` is below it the solve
            ends here and needs only the gradient, so the factorization is
            skipped (``s``, ``V``, ``suf`` are zeros). The caller passes
            ``gtol``, or ``inf`` at a point where the solve ends for another
            reason. As scipy, which stops before its last SVD (one SVD, up
            to a fifth of a short solve, measured on spectral 512).
        jac_scale: Whether ``x_scale="jac"``.
    """
    m, n = J.shape
    if jac_scale:
        norms = jnp.sqrt(jnp.sum(J * J, axis=0))
        norms = jnp.where(norms == 0, jnp.ones_like(norms), norms)
        scale_inv = jnp.maximum(norms, scale_inv)
    d = 1 / scale_inv
    Jh = J * d[None, :]
    grad = f @ J
    eps = jnp.finfo(J.dtype).eps
    no = jnp.zeros((), bool)

    def svd_branch() -> tuple[jax.Array, jax.Array, jax.Array]:
        s, V = _svd_factor(Jh)
        return s, V, no

    k = min(m, n)
    g_norm = jnp.max(jnp.abs(grad))
    skip = g_norm < skip_below

    def skip_branch() -> tuple[jax.Array, jax.Array, jax.Array]:
        return jnp.zeros((k,), J.dtype), jnp.zeros((n, k), J.dtype), try_gram

    if m >= n:
        rcond = GRAM_RCOND_FACTOR * (m + n) * eps

        def eigh_branch() -> tuple[jax.Array, jax.Array, jax.Array]:
            lam, V = jnp.linalg.eigh(Jh.T @ Jh)
            lam, V = lam[::-1], V[:, ::-1]  # descending, like the SVD
            s = jnp.sqrt(jnp.maximum(lam, 0))
            return jax.lax.cond(lam[-1] >= rcond * lam[0], lambda: (s, V, ~no), svd_branch)

        # The Gram diagonal (squared column norms) bounds its spectrum:
        # lam_min <= min(diag) and lam_max >= max(diag), so a spread diagonal
        # rules the Gram path out before paying for the eigendecomposition.
        col2 = jnp.sum(Jh * Jh, axis=0)
        maybe = try_gram & (jnp.min(col2) >= rcond * jnp.max(col2))
        branch = jnp.where(skip, 0, jnp.where(maybe, 1, 2))
        s, V, gram = jax.lax.switch(branch, (skip_branch, eigh_branch, svd_branch))
    else:
        s, V, gram = jax.lax.cond(skip, skip_branch, svd_branch)
    suf = (d * grad) @ V
    full_rank = (m >= n) & (s[-1] > eps * m * s[0])
    return Factorization(s, V, suf, grad, scale_inv, full_rank, g_norm, gram,
                         _gauss_newton(Jh, f, s, V, suf, full_rank))


def _gauss_newton(
    Jh: jax.Array, f: jax.Array, s: jax.Array, V: jax.Array, suf: jax.Array, full_rank: jax.Array
) -> jax.Array:
    """``argmin ||J_h p + f||`` from the factorization, then refined against ``J_h``.

    Each sweep solves for the correction from the gradient of the current
    step's residual, ``J_h.T (J_h p + f)``, computed from ``J_h`` itself; the
    factorization only preconditions. With the Gram path's error bound below
    10% the step reaches the SVD's accuracy in two sweeps (Björck's corrected
    semi-normal equations); after an SVD they change nothing that matters.
    """
    s2 = s * s
    safe_s2 = jnp.where(s2 > 0, s2, jnp.ones_like(s2))
    p = -V @ (suf / safe_s2)
    for _ in range(_REFINE_SWEEPS):
        p = p - V @ (((Jh @ p + f) @ Jh @ V) / safe_s2)
    return jnp.where(full_rank, p, jnp.zeros_like(p))


def trust_region_step(fac: Factorization, Delta: jax.Array, alpha: jax.Array) -> TrustStep:
    """Solves the trust-region subproblem for radius ``Delta`` from a factorization.

    Mirrors scipy's ``solve_lsq_trust_region``: the Gauss-Newton step when
    ``J_h`` has full rank and the step fits, else Newton iterations on
    ``||p(alpha)|| - Delta`` safeguarded by bounds on ``alpha``.

    Args:
        fac: From `lsq_factor`.
        Delta: Trust-region radius (scaled variables), a 0-d array.
        alpha: Starting Levenberg-Marquardt parameter (the last one used).
    """
    s, V, suf, full_rank = fac.s, fac.V, fac.suf, fac.full_rank
    dtype = s.dtype
    s2 = s * s
    p_gn = fac.gn
    gauss_newton = full_rank & (jnp.linalg.norm(p_gn) <= Delta)

    def phi_and_slope(a: jax.Array) -> tuple[jax.Array, jax.Array]:
        denom = s2 + a
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
    _, alpha, _, _, _ = jax.lax.while_loop(cond, body, init)
    p = -V @ (suf / (s2 + alpha))
    p_norm = jnp.linalg.norm(p)
    p = p * (Delta / jnp.where(p_norm > 0, p_norm, jnp.ones_like(p_norm)))
    step = jnp.where(gauss_newton, p_gn, p)
    alpha = jnp.where(gauss_newton, zero, alpha)
    vp = step @ V
    predicted = -(0.5 * jnp.sum((s * vp) ** 2) + jnp.dot(suf, vp))
    return TrustStep(step, alpha, predicted)
