"""The 2-D Bratu problem ``-laplace(u) = lam * exp(u)`` on the unit square.

Zero Dirichlet boundary, five-point stencil on a ``size x size`` interior grid
(``n = size**2`` unknowns), residuals scaled by ``h**2``:
``4 u_ij - (neighbours) - h**2 lam exp(u_ij)``. With ``lam = 6`` (below the
critical 6.81) a solution exists, so the minimum cost is 0; the solver starts
from ``u = 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from solver.objective import Objective

KNOWN_MIN_COST = 0.0
LAMBDA = 6.0


def residual(x: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
    """The ``(size**2,)`` Bratu residuals; the grid size comes from ``x``'s length."""
    size = int(round(x.shape[0] ** 0.5))
    u = x.reshape(size, size)
    padded = jnp.pad(u, 1)
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    h2 = params["h2"]
    return (4 * u - neighbours - h2 * params["lam"] * jnp.exp(u)).reshape(-1)


def make(size: int) -> tuple[list[Objective], np.ndarray]:
    """A ``size x size`` interior grid.

    Raises:
        ValueError: If ``size`` is not a positive int.
    """
    if size < 1:
        raise ValueError(f"{size=} must be a positive int for bratu")
    n = size * size
    params = {"lam": np.float64(LAMBDA), "h2": np.float64(1.0 / (size + 1) ** 2)}
    return [Objective(residual, n, params=params, name="bratu")], np.zeros(n)
