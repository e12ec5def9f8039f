"""A tall exponential fit plus a Tikhonov sub-objective (exercises blocked mode).

Model ``y(t) = sum_i a_i exp(-b_i t)`` with ``size`` terms (``n = 2 * size``),
fitted to ``40 * n`` noisy samples; a second objective
``sqrt(TIKHONOV) * (x - prior)`` keeps the fit well posed. The minimum cost is
not zero; compare against a reference solver.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from solver.objective import Objective

TIKHONOV = 1e-3
SAMPLES_PER_PARAMETER = 40


def fit_residual(x: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
    """Model minus data at every sample ``(m,)``."""
    a, b = x[0::2], x[1::2]
    model = jnp.exp(-params["t"][:, None] * b[None, :]) @ a
    return model - params["y"]


def tikhonov_residual(x: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
    """Distance to the prior ``(n,)`` (the weight carries ``sqrt(TIKHONOV)``)."""
    return x - params["prior"]


def make(size: int) -> tuple[list[Objective], np.ndarray]:
    """``size`` exponential terms.

    Raises:
        ValueError: If ``size`` is not a positive int.
    """
    if size < 1:
        raise ValueError(f"{size=} must be a positive int for curvefit")
    n = 2 * size
    m = SAMPLES_PER_PARAMETER * n
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 4.0, m)
    a_true = 1.0 + rng.random(size)
    b_true = np.linspace(0.5, 3.0, size)
    y = np.exp(-np.outer(t, b_true)) @ a_true + 0.01 * rng.standard_normal(m)
    prior = np.ravel(np.column_stack([np.ones(size), np.linspace(0.4, 2.5, size)]))
    fit = Objective(fit_residual, m, params={"t": t, "y": y}, name="fit")
    reg = Objective(
        tikhonov_residual, n, params={"prior": prior}, weight=np.sqrt(TIKHONOV), name="tikhonov"
    )
    return [fit, reg], prior.copy()
