"""Objectives: residual functions, their data, and how their Jacobian is chunked.

An `Objective` is one residual block ``fn(x, params) -> (dim_f,)``. Data reach
``fn`` through ``params`` (a pytree of arrays), never through a closure, so the
jitted kernels are module-level functions whose persistent-cache keys depend
only on shapes, dtypes and hashable static configuration.

`ObjectiveFunction` stacks objectives and decides how the Jacobian is chunked,
following DESC's rules:

* ``deriv_mode="batched"``: one chunk size (``jac_chunk_size`` on the
  `ObjectiveFunction`) for all rows. A chunk size given on a sub-objective is
  an error, since it would be silently ignored.
* ``deriv_mode="blocked"``: each sub-objective's rows are computed on their own
  with that sub-objective's ``jac_chunk_size``. An integer chunk size on the
  `ObjectiveFunction` is an error for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import jax
import numpy as np

from solver import memory
from solver.errors import SolverError
from solver.jacobian import JacobianPlan, ResidualSpec, column_devices
from solver.kernels import abstract, is_stored, lsq_jacobian_jit, lsq_residual_jit, probe_memory

__all__ = ["ChunkSize", "DerivMode", "Objective", "ObjectiveFunction"]

DerivMode = Literal["batched", "blocked"]
ChunkSize = Union[int, Literal["auto"], None]
_DERIV_MODES = ("batched", "blocked")


def _is_posint(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _check_chunk_size(jac_chunk_size: object) -> None:
    if not (jac_chunk_size is None or jac_chunk_size == "auto" or _is_posint(jac_chunk_size)):
        raise ValueError(f"{jac_chunk_size=} must be a positive int, 'auto' or None")


class Objective:
    """One block of residuals ``weight * fn(x, params)``.

    Args:
        fn: Pure residual function ``fn(x, params) -> array of shape (dim_f,)``.
            Prefer a module-level function: its identity is part of the jit
            cache key within a process.
        dim_f: Number of residuals ``fn`` returns.
        params: Pytree of arrays passed to ``fn``; floating leaves are cast to
            the working dtype when the objective is built.
        weight: Scalar or ``(dim_f,)`` array multiplying the residuals.
        jac_chunk_size: Columns per forward-mode chunk for this block; only
            allowed with ``deriv_mode="blocked"``. ``None`` means "auto".
        name: Label for messages; defaults to ``fn.__name__``.

    Raises:
        ValueError: On a non-callable ``fn`` or an invalid size, weight or
            chunk size.
    """

    def __init__(
        self,
        fn: Callable[[jax.Array, Any], jax.Array],
        dim_f: int,
        *,
        params: Any = None,
        weight: float | np.ndarray = 1.0,
        jac_chunk_size: ChunkSize = None,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {type(fn).__name__}")
        if not _is_posint(dim_f):
            raise ValueError(f"{dim_f=} must be a positive int")
        _check_chunk_size(jac_chunk_size)
        w = np.asarray(weight, dtype=np.float64)
        if w.ndim > 1 or (w.ndim == 1 and w.shape != (dim_f,)):
            raise ValueError(f"weight has shape {w.shape}; expected a scalar or ({dim_f},)")
        if not np.all(np.isfinite(w)):
            raise ValueError("weight must be finite")
        self.fn = fn
        self.dim_f = int(dim_f)
        self.params = params
        self.weight = w
        self.jac_chunk_size = jac_chunk_size
        self.name = name if name is not None else getattr(fn, "__name__", "objective")

    def replace(self, **changes: Any) -> Objective:
        """Returns a copy with some constructor arguments changed."""
        kwargs = dict(
            params=self.params,
            weight=self.weight,
            jac_chunk_size=self.jac_chunk_size,
            name=self.name,
        )
        kwargs.update(changes)
        fn = kwargs.pop("fn", self.fn)
        dim_f = kwargs.pop("dim_f", self.dim_f)
        return Objective(fn, dim_f, **kwargs)

    def __repr__(self) -> str:
        return f"Objective({self.name!r}, dim_f={self.dim_f}, jac_chunk_size={self.jac_chunk_size!r})"


def _cast_leaf(leaf: Any, dtype: np.dtype) -> jax.Array:
    arr = np.asarray(leaf)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(dtype)
    # From a NumPy array, device_put gives a strongly typed array, so the
    # cache key of a kernel does not depend on how the user spelled a scalar;
    # unlike jnp.asarray (jax >= 0.10) it compiles no conversion kernel.
    return jax.device_put(arr)


class ObjectiveFunction:
    """Stacked objectives with a chunked forward-mode Jacobian.

    Args:
        objectives: One `Objective` or a sequence of them; residuals are
            concatenated in order.
        deriv_mode: ``"batched"`` (one chunk size for all rows) or
            ``"blocked"`` (each sub-objective with its own chunk size).
        jac_chunk_size: Batched mode: a positive int, ``"auto"`` (largest chunk
            that fits the memory budget) or ``None`` (all columns at once).
            Blocked mode: only ``"auto"``/``None``.
        memory_budget: Bytes "auto" may plan for; default from the device
            (see `solver.memory.memory_budget`).
        num_devices: Devices to split the Jacobian's column chunks over;
            default all devices of the default backend. 1 disables sharding.

    Raises:
        ValueError: On an invalid option or a chunk size given in the wrong
            place for ``deriv_mode``.
    """

    def __init__(
        self,
        objectives: Objective | Sequence[Objective],
        *,
        deriv_mode: DerivMode = "batched",
        jac_chunk_size: ChunkSize = "auto",
        memory_budget: int | None = None,
        num_devices: int | None = None,
    ) -> None:
        objs = (objectives,) if isinstance(objectives, Objective) else tuple(objectives)
        if not objs or not all(isinstance(o, Objective) for o in objs):
            raise ValueError("objectives must be a non-empty sequence of Objective")
        if deriv_mode not in _DERIV_MODES:
            raise ValueError(f"{deriv_mode=} must be one of {_DERIV_MODES}")
        _check_chunk_size(jac_chunk_size)
        if memory_budget is not None and not _is_posint(memory_budget):
            raise ValueError(f"{memory_budget=} must be a positive int (bytes) or None")
        if num_devices is not None and not _is_posint(num_devices):
            raise ValueError(f"{num_devices=} must be a positive int or None")
        if deriv_mode == "blocked" and _is_posint(jac_chunk_size):
            raise ValueError(
                f"{jac_chunk_size=} was passed to ObjectiveFunction, but deriv_mode='blocked' "
                "uses each sub-objective's jac_chunk_size; pass it to the Objectives instead "
                "or use deriv_mode='batched'"
            )
        if deriv_mode == "batched":
            misplaced = [o.name for o in objs if _is_posint(o.jac_chunk_size)]
            if misplaced:
                raise ValueError(
                    f"jac_chunk_size was passed to sub-objective(s) {misplaced}, but "
                    "deriv_mode='batched' uses only ObjectiveFunction's jac_chunk_size; "
                    "use deriv_mode='blocked' to give each sub-objective its own chunk size"
                )
        self.objectives = objs
        self.deriv_mode: DerivMode = deriv_mode
        self.requested_jac_chunk_size = jac_chunk_size
        self.memory_budget = memory_budget
        self.num_devices = num_devices
        self.dim_f = sum(o.dim_f for o in objs)
        self.spec = ResidualSpec(
            fns=tuple(o.fn for o in objs), dims=tuple(o.dim_f for o in objs)
        )
        self.dim_x: int | None = None
        self.dtype: np.dtype | None = None
        self.data: tuple[Any, ...] | None = None
        self.plan: JacobianPlan | None = None
        self.memory_models: tuple[Any, ...] = ()

    @property
    def built(self) -> bool:
        """Whether `build` has resolved shapes, data and chunk sizes."""
        return self.plan is not None

    @property
    def jac_chunk_size(self) -> int | None:
        """The resolved batched chunk size (None before build or when blocked)."""
        if self.plan is None or self.plan.blocked:
            return None
        return self.plan.chunks[0]

    @property
    def jac_chunk_sizes(self) -> tuple[int, ...]:
        """The resolved chunk size of each block (one entry when batched)."""
        return () if self.plan is None else self.plan.chunks

    def build(self, x: Any) -> ObjectiveFunction:
        """Resolves the working dtype, data and chunk sizes for ``x``'s shape.

        Args:
            x: The initial point, or a ``jax.ShapeDtypeStruct`` of it (1-D).

        Returns:
            ``self``, built. Rebuilding for the same shape and dtype is a no-op.

        Raises:
            ValueError: If ``x`` is not 1-D or a residual has the wrong shape.
        """
        shape = tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(f"x must be a non-empty 1-D array, got shape {shape}")
        in_dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
        dtype = jax.dtypes.canonicalize_dtype(np.result_type(in_dtype, np.float32))
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(f"x must be real floating point, got {dtype}")
        if self.built and self.dim_x == shape[0] and self.dtype == dtype:
            return self
        self.dim_x, self.dtype = shape[0], np.dtype(dtype)
        self.data = tuple(
            (jax.tree_util.tree_map(lambda leaf: _cast_leaf(leaf, dtype), o.params),
             _cast_leaf(o.weight, dtype))
            for o in self.objectives
        )
        if not self._residual_is_stored():
            self._check_shapes()
        ndev = self.num_devices if self.num_devices is not None else len(jax.devices())
        ndev = column_devices(ndev, self.dim_x)
        if self.deriv_mode == "batched":
            requested: tuple[ChunkSize, ...] = (self.requested_jac_chunk_size,)
        else:
            requested = tuple(o.jac_chunk_size for o in self.objectives)
        budget = memory.memory_budget(self.memory_budget)
        chunks, models = [], []
        for block, req in enumerate(requested):
            if _is_posint(req):
                chunks.append(min(int(req), self.dim_x))
                models.append(None)
            elif req is None and self.deriv_mode == "batched":
                chunks.append(self.dim_x)
                models.append(None)
            else:
                which = None if self.deriv_mode == "batched" else block
                model = memory.fit_memory_model(
                    self, block=which, measure=lambda chunk, which=which: probe_memory(self, which, chunk)
                )
                chunks.append(
                    memory.choose_chunk_size(
                        model, budget, self.dim_x, num_devices=ndev,
                        working_set=memory.working_set_cap() if model.source == "compiler" else None,
                        whole_limit=memory.whole_jacobian_cap() if model.source == "compiler" else None,
                    )
                )
                models.append(model)
        self.plan = JacobianPlan(
            chunks=tuple(chunks), blocked=self.deriv_mode == "blocked", num_devices=ndev
        )
        self.memory_models = tuple(models)
        return self

    def _residual_is_stored(self) -> bool:
        """Whether the kernel store has this residual for these shapes: it was compiled, so
        its shapes were checked, and tracing the function again (seconds for a large
        program) would only repeat that."""
        x = jax.ShapeDtypeStruct((self.dim_x,), self.dtype)
        return is_stored(lsq_residual_jit, {"spec": self.spec}, abstract((x, self.data)))

    def _check_shapes(self) -> None:
        x = jax.ShapeDtypeStruct((self.dim_x,), self.dtype)
        for obj, (params, _) in zip(self.objectives, self.data):
            try:
                out = jax.eval_shape(obj.fn, x, params)
            except Exception as err:  # the user's function failed to trace
                raise SolverError(f"objective {obj.name!r} failed on x of shape {x.shape}: {err}") from err
            if not hasattr(out, "shape") or tuple(out.shape) != (obj.dim_f,):
                got = getattr(out, "shape", type(out).__name__)
                raise ValueError(
                    f"objective {obj.name!r} returned shape {got}, expected ({obj.dim_f},) = (dim_f,)"
                )

    def _require_built(self) -> None:
        if not self.built:
            raise SolverError("ObjectiveFunction is not built; call build(x0) first")

    def compute(self, x: Any) -> jax.Array:
        """Weighted residuals at ``x`` (builds on first use)."""
        self.build(x)
        return lsq_residual_jit(np.asarray(x, self.dtype), self.data, spec=self.spec)

    def jac(self, x: Any) -> jax.Array:
        """The ``(dim_f, dim_x)`` Jacobian at ``x`` (builds on first use)."""
        self.build(x)
        return lsq_jacobian_jit(
            np.asarray(x, self.dtype), self.data, spec=self.spec, plan=self.plan
        )

    def __repr__(self) -> str:
        chunks = self.jac_chunk_sizes or self.requested_jac_chunk_size
        return (
            f"ObjectiveFunction({len(self.objectives)} objectives, dim_f={self.dim_f}, "
            f"deriv_mode={self.deriv_mode!r}, jac_chunk_size={chunks!r})"
        )
