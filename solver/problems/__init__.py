"""The bundled problems, each with a size knob.

``get(name, size)`` returns ``(ObjectiveFunction, x0)``:

| name | unknowns | residuals |
|---|---|---|
| ``rosenbrock`` | ``size`` (even) | ``size`` |
| ``bratu`` | ``size**2`` | ``size**2`` |
| ``spectral`` | ``size`` | ``size`` (dense, costly columns) |
| ``curvefit`` | ``2 * size`` | ``80 * size`` fit + ``2 * size`` Tikhonov (two blocks) |
| ``kinetics`` | 10 | ``6 * size`` (a ``size``-step integration, unrolled: compiling dominates) |
"""

from __future__ import annotations

import numpy as np

from solver.objective import ChunkSize, DerivMode, ObjectiveFunction
from solver.problems import bratu, curvefit, kinetics, rosenbrock, spectral

__all__ = ["NAMES", "get"]

_MODULES = {"rosenbrock": rosenbrock, "bratu": bratu, "spectral": spectral, "curvefit": curvefit, "kinetics": kinetics}
NAMES: tuple[str, ...] = tuple(_MODULES)


def get(
    name: str,
    size: int,
    *,
    deriv_mode: DerivMode = "batched",
    jac_chunk_size: ChunkSize = "auto",
    memory_budget: int | None = None,
    num_devices: int | None = None,
) -> tuple[ObjectiveFunction, np.ndarray]:
    """A bundled problem as ``(objective, x0)``.

    In blocked mode an integer ``jac_chunk_size`` is given to every
    sub-objective (the ObjectiveFunction itself may not take one there).

    Raises:
        ValueError: On an unknown name or an invalid size.
    """
    if name not in _MODULES:
        raise ValueError(f"{name=} is not a bundled problem; choose from {', '.join(NAMES)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{size=} must be a positive int")
    objectives, x0 = _MODULES[name].make(int(size))
    top: ChunkSize = jac_chunk_size
    if deriv_mode == "blocked" and jac_chunk_size not in (None, "auto"):
        objectives = [o.replace(jac_chunk_size=jac_chunk_size) for o in objectives]
        top = "auto"
    objective = ObjectiveFunction(
        objectives,
        deriv_mode=deriv_mode,
        jac_chunk_size=top,
        memory_budget=memory_budget,
        num_devices=num_devices,
    )
    return objective, x0
