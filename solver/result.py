"""The result of `least_squares`: fields and status codes as in scipy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["STATUS_MESSAGES", "LeastSquaresResult"]

STATUS_MESSAGES: dict[int, str] = {
    -2: "The callback requested termination.",
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
}
"""Status codes 0-4 mean what they mean in ``scipy.optimize.least_squares``."""


@dataclass(frozen=True)
class LeastSquaresResult:
    """What `least_squares` found.

    Attributes:
        x: Solution ``(n,)`` (NumPy, working dtype).
        cost: ``0.5 * ||f(x)||^2``.
        fun: Residuals at ``x``.
        grad: Gradient ``J.T @ f`` at ``x``.
        optimality: ``max |grad|``, the first-order optimality measure.
        nfev: Residual evaluations.
        njev: Jacobian evaluations.
        nit: Outer iterations (factorizations).
        status: Termination status (see `STATUS_MESSAGES`).
        message: Readable status.
        success: ``status > 0``.
        jac_chunk_sizes: The resolved chunk size of each Jacobian block.
        seconds: Wall time of the solve.
    """

    x: np.ndarray
    cost: float
    fun: np.ndarray
    grad: np.ndarray
    optimality: float
    nfev: int
    njev: int
    nit: int
    status: int
    jac_chunk_sizes: tuple[int, ...] = ()
    seconds: float = 0.0
    message: str = field(init=False)
    success: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", STATUS_MESSAGES[self.status])
        object.__setattr__(self, "success", self.status > 0)

    def summary(self) -> dict[str, object]:
        """JSON-ready scalars (no arrays)."""
        return {
            "cost": self.cost,
            "optimality": self.optimality,
            "nfev": self.nfev,
            "njev": self.njev,
            "nit": self.nit,
            "status": self.status,
            "message": self.message,
            "success": self.success,
            "jac_chunk_sizes": list(self.jac_chunk_sizes),
            "seconds": self.seconds,
        }
