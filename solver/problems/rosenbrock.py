"""Extended Rosenbrock (Moré, Garbow & Hillstrom 1981, problem 21).

Residuals, for each pair ``(x[2i], x[2i+1])``: ``a * (x[2i+1] - x[2i]**2)`` and
``1 - x[2i]``, with ``a = 10`` passed in ``params``. Minimum: cost 0 at all ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from solver.objective import Objective

KNOWN_MIN_COST = 0.0


def residual(x: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
    """The ``(n,)`` extended-Rosenbrock residuals."""
    odd, even = x[0::2], x[1::2]
    return jnp.stack([params["a"] * (even - odd**2), 1 - odd], axis=1).reshape(-1)


def make(size: int) -> tuple[list[Objective], np.ndarray]:
    """``size`` variables (even) starting from ``(-1.2, 1, -1.2, 1, ...)``.

    Raises:
        ValueError: If ``size`` is not a positive even int.
    """
    if size < 2 or size % 2:
        raise ValueError(f"{size=} must be a positive even int for rosenbrock")
    x0 = np.tile([-1.2, 1.0], size // 2)
    return [Objective(residual, size, params={"a": np.float64(10.0)}, name="rosenbrock")], x0
