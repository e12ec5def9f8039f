"""A chunked-Jacobian nonlinear least-squares solver in JAX.

Example:
    >>> import solver
    >>> objective, x0 = solver.problems.get("bratu", 8)
    >>> result = solver.least_squares(objective, x0)
    >>> result.success
    True
"""

from __future__ import annotations

from solver import problems
from solver.errors import SolverError
from solver.jacobian import JacobianPlan, ResidualSpec
from solver.kernels import Kernel, kernels
from solver.lsq import IterationInfo, least_squares
from solver.memory import MemoryModel, available_memory, memory_budget
from solver.objective import ChunkSize, DerivMode, Objective, ObjectiveFunction
from solver.result import STATUS_MESSAGES, LeastSquaresResult

__all__ = [
    "STATUS_MESSAGES",
    "ChunkSize",
    "DerivMode",
    "IterationInfo",
    "JacobianPlan",
    "Kernel",
    "LeastSquaresResult",
    "MemoryModel",
    "Objective",
    "ObjectiveFunction",
    "ResidualSpec",
    "SolverError",
    "available_memory",
    "kernels",
    "least_squares",
    "memory_budget",
    "problems",
]
