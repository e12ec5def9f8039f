"""Moré-Garbow-Hillstrom test problems (ACM TOMS 7, 1981) as solver residuals.

Each entry: ``(fn, params, x0)``; data go through ``params``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def helical_valley(x, params):
    theta = jnp.arctan2(x[1], x[0]) / (2 * jnp.pi)
    return jnp.stack([
        10 * (x[2] - 10 * theta),
        10 * (jnp.sqrt(x[0] ** 2 + x[1] ** 2) - 1),
        x[2],
    ])


def powell_singular(x, params):
    return jnp.stack([
        x[0] + 10 * x[1],
        jnp.sqrt(5.0) * (x[2] - x[3]),
        (x[1] - 2 * x[2]) ** 2,
        jnp.sqrt(10.0) * (x[0] - x[3]) ** 2,
    ])


def freudenstein_roth(x, params):
    return jnp.stack([
        -13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
        -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1],
    ])


def bard(x, params):
    u, v, w = params["u"], params["v"], params["w"]
    return params["y"] - (x[0] + u / (v * x[1] + w * x[2]))


def kowalik_osborne(x, params):
    u, y = params["u"], params["y"]
    return y - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def box_3d(x, params):
    t = params["t"]
    return (jnp.exp(-t * x[0]) - jnp.exp(-t * x[1])) - x[2] * (jnp.exp(-t) - jnp.exp(-10 * t))


def brown_dennis(x, params):
    t = params["t"]
    return (x[0] + t * x[1] - jnp.exp(t)) ** 2 + (x[2] + x[3] * jnp.sin(t) - jnp.cos(t)) ** 2


def beale(x, params):
    y = params["y"]
    i = jnp.arange(1, 4, dtype=x.dtype)
    return y - x[0] * (1 - x[1] ** i)


_i15 = np.arange(1, 16, dtype=float)
_v15 = 16 - _i15
_ku = np.array([4, 2, 1, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])
_t10 = 0.1 * np.arange(1, 11)
_t20 = np.arange(1, 21) / 5.0

PROBLEMS = {
    "helical_valley": (helical_valley, None, [-1.0, 0.0, 0.0]),
    "powell_singular": (powell_singular, None, [3.0, -1.0, 0.0, 1.0]),
    "freudenstein_roth": (freudenstein_roth, None, [0.5, -2.0]),
    "bard": (
        bard,
        {
            "y": np.array([0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39]),
            "u": _i15, "v": _v15, "w": np.minimum(_i15, _v15),
        },
        [1.0, 1.0, 1.0],
    ),
    "kowalik_osborne": (
        kowalik_osborne,
        {"u": _ku, "y": np.array([0.1957, 0.1947, 0.1735, 0.16, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246])},
        [0.25, 0.39, 0.415, 0.39],
    ),
    "box_3d": (box_3d, {"t": _t10}, [0.0, 10.0, 20.0]),
    "brown_dennis": (brown_dennis, {"t": _t20}, [25.0, 5.0, -5.0, -1.0]),
    "beale": (beale, {"y": np.array([1.5, 2.25, 2.625])}, [1.0, 1.0]),
}
