"""Rate constants of a reversible reaction chain, fitted to an observed trajectory.

Six species in a chain ``c_0 <-> c_1 <-> ... <-> c_5``; the unknowns are the
logarithms of the five forward and five backward rates (``n = 10``). The
model integrates the rate equations with ``size`` classical Runge-Kutta steps
over ``t in [0, 4]`` and the residuals are the differences from an observed
trajectory at every step (``m = 6 * size``), made with the true rates, so the
minimum cost is 0.

The time loop is a Python loop, which JAX unrolls: the program, and so the
compile time, grows with ``size`` while the compute stays tiny. Scientific
codes written this way (and codes such as DESC, whose objectives trace to very
large programs) spend most of a fresh run compiling: this is the bundled
problem where compiling dominates.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from solver.objective import Objective

KNOWN_MIN_COST = 0.0
SPECIES = 6
T_END = 4.0
_TRUE_LOG_RATES = np.array([0.3, -0.2, 0.1, -0.4, 0.2, -0.6, -0.1, -0.8, -0.3, -0.5])
_START_OFFSET = np.array([0.4, -0.3, 0.3, 0.2, -0.4, 0.3, 0.4, -0.2, 0.3, -0.3])


# Column i: reaction i -> i+1 consumes species i and makes species i+1.
_STOICHIOMETRY = np.eye(SPECIES, SPECIES - 1, k=-1) - np.eye(SPECIES, SPECIES - 1)


def _trajectory(log_rates: Any, c0: Any, steps: int, dt: Any, xp: Any = jnp) -> Any:
    """The concentrations after each of ``steps`` RK4 steps (``xp``: jax.numpy, or numpy for the data)."""
    forward, backward = xp.exp(log_rates[: SPECIES - 1]), xp.exp(log_rates[SPECIES - 1:])
    stoichiometry = xp.asarray(_STOICHIOMETRY, dtype=c0.dtype)

    def rates(c: Any) -> Any:
        return stoichiometry @ (forward * c[:-1] - backward * c[1:])  # net flux of reaction i -> i+1

    c, states = c0, []
    for _ in range(steps):  # unrolled on purpose (see the module docstring)
        k1 = rates(c)
        k2 = rates(c + 0.5 * dt * k1)
        k3 = rates(c + 0.5 * dt * k2)
        k4 = rates(c + dt * k3)
        c = c + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        states.append(c)
    return xp.stack(states)


def residual(x: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
    """Model minus observed concentrations at every step, ``(steps * 6,)``."""
    observed = params["observed"]
    steps = observed.shape[0]
    return (_trajectory(x, params["c0"], steps, params["dt"]) - observed).reshape(-1)


def make(size: int) -> tuple[list[Objective], np.ndarray]:
    """``size`` time steps.

    Raises:
        ValueError: If ``size`` is not a positive int.
    """
    if size < 1:
        raise ValueError(f"{size=} must be a positive int for kinetics")
    c0 = np.zeros(SPECIES)
    c0[0] = 1.0
    dt = T_END / size
    observed = _trajectory(_TRUE_LOG_RATES, c0, size, dt, xp=np)
    params = {"observed": observed, "c0": c0, "dt": np.float64(dt)}
    x0 = _TRUE_LOG_RATES + _START_OFFSET
    return [Objective(residual, SPECIES * size, params=params, name="kinetics")], x0
