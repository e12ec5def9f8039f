"""The solver's exception hierarchy."""

from __future__ import annotations

__all__ = ["SolverError"]


class SolverError(Exception):
    """Base class for errors raised by `solver` (other than ValueError on bad input)."""
