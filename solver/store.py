"""The hook for a kernel store: whole compiled kernels kept across processes.

The solver works alone: every kernel is compiled by ``jax.jit`` (and JAX's
persistent cache, if the program turned it on). A kernel store, when one is
plugged in, serves the solver's module-level kernels compiled in an earlier
process, so a warm start traces and lowers nothing. The solver knows the
store only through `KernelStore`; a package that provides one (jaxcache's
executable store, ``jaxcache.executables``) calls `set_kernel_store`, so the
dependency runs from the store to the solver, never back.

A store is keyed by ``identity`` (a string naming a kernel's code and static
configuration the same way in every process, see `solver.kernels`) and the
abstract arguments (pytrees of `jax.ShapeDtypeStruct`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Protocol

__all__ = ["KernelStore", "kernel_store", "set_kernel_store"]


class KernelStore(Protocol):
    """What the solver asks of a kernel store."""

    def active(self) -> bool:
        """Whether it serves kernels in this process now."""

    def context(self) -> Hashable:
        """What, besides the arguments, decides the traced program in this process (x64, precision, ...)."""

    def is_stored(self, specs: Any, *, identity: str, verify: bool = False) -> bool:
        """Whether it holds this kernel for these abstract arguments (nothing loaded)."""

    def stored_here(self, specs: Any, *, identity: str) -> bool:
        """Whether this process itself stored it."""

    def load(self, specs: Any, *, identity: str, module: str, prepare: bool = True) -> Any | None:
        """The stored `jax.stages.Compiled`, or None. ``prepare=False``: the caller calls `prepare_runtime`."""

    def load_or_compile(self, jitted: Any, specs: Any, static: Mapping[str, Any], *, identity: str, module: str,
                        fresh: bool = False) -> tuple[Any, str]:
        """The compiled kernel (``jitted.lower(*specs, **static).compile()``) and how it was
        obtained: ``"loaded"``, ``"stored"`` or ``"compiled"``. ``fresh``: store it even if
        JAX's cache had it (warming)."""

    def memory_analysis(self, jitted: Any, specs: Any, static: Mapping[str, Any], *, identity: str,
                        module: str) -> dict[str, int] | None:
        """The compiler's memory analysis of the kernel (as `jax.stages.Compiled.memory_analysis`)."""

    def prepare_runtime(self) -> None:
        """Whatever loaded kernels need before they run."""


_store: KernelStore | None = None


def set_kernel_store(store: KernelStore | None) -> KernelStore | None:
    """Plugs a kernel store in (None unplugs it); returns the previous one."""
    global _store
    previous, _store = _store, store
    return previous


def kernel_store() -> KernelStore | None:
    """The kernel store plugged in, if any."""
    return _store
