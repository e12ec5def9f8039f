"""A spectral-Galerkin residual whose per-column work is large.

Find the periodic ``u(t) = sum_k c_k cos(k t)``, ``k < size``, with
``-u'' + u + u**3 = g`` on ``[0, 2 pi)``, Galerkin-projected onto the same
basis with ``OVERSAMPLE * size`` quadrature points. ``g`` is made from
``c*_k = 1 / (1 + k**2)``, so the minimum cost is 0 at ``c*``. Each Jacobian
column evaluates and projects through dense ``(Q, size)`` basis matrices
(passed in ``params``), so per-column work and memory grow with ``size`` and
the chunk size matters.
"""

from __future__ import annotations

import jax
import numpy as np

from solver.objective import Objective

KNOWN_MIN_COST = 0.0
OVERSAMPLE = 8


def residual(x: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
    """The ``(size,)`` Galerkin residuals."""
    phi, phi_tt, w, g = params["phi"], params["phi_tt"], params["w"], params["g"]
    u = phi @ x
    pointwise = -(phi_tt @ x) + u + u**3 - g
    return phi.T @ (w * pointwise)


def basis(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Basis values, second derivatives and quadrature weights on the grid."""
    q = OVERSAMPLE * size
    t = 2 * np.pi * np.arange(q) / q
    k = np.arange(size)
    phi = np.cos(np.outer(t, k))
    return phi, -(k**2) * phi, np.full(q, 1.0 / q)


def solution(size: int) -> np.ndarray:
    """The exact coefficients ``c*``."""
    return 1.0 / (1.0 + np.arange(size) ** 2)


def make(size: int) -> tuple[list[Objective], np.ndarray]:
    """``size`` cosine modes, starting from zero.

    Raises:
        ValueError: If ``size`` is not a positive int.
    """
    if size < 1:
        raise ValueError(f"{size=} must be a positive int for spectral")
    phi, phi_tt, w = basis(size)
    c = solution(size)
    u = phi @ c
    g = -(phi_tt @ c) + u + u**3
    params = {"phi": phi, "phi_tt": phi_tt, "w": w, "g": g}
    return [Objective(residual, size, params=params, name="spectral")], np.zeros(size)
