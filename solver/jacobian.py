"""The residual and its chunked forward-mode Jacobian, as pure traceable functions.

The Jacobian (``dim_f x dim_x``) is built column chunk by column chunk: the
residual is linearized once (`jax.linearize`), then a ``lax.fori_loop`` pushes
``chunk`` one-hot tangents at a time through the linear map with `jax.vmap`
and writes the resulting ``(rows, chunk)`` block into place with
``lax.dynamic_update_slice``. Memory is about ``m0 + m1 * chunk``, time about
``t0 + t1 / chunk``.

* No identity matrix: each chunk builds only its own ``(chunk, dim_x)`` tangents.
* No transpose: `jax.vmap(..., out_axes=1)` yields the block in column order.
* One loop body for any chunk size: when ``chunk`` does not divide ``dim_x``,
  the last chunk starts at ``dim_x - chunk`` and recomputes a few columns
  rather than needing a second, shorter body.
* Several devices: chunks are dealt to a 1-D mesh (axis ``"cols"``), columns
  padded up to ``devices * chunks_per_device * chunk`` with zero tangents. One
  device takes the plain path and pays nothing for this.

The functions here take arrays plus hashable static configuration
(`ResidualSpec`, `JacobianPlan`); `solver.kernels` wraps them in module-level
`jax.jit` so their persistent-cache keys depend only on shapes and that
configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "COLUMN_AXIS",
    "JacobianPlan",
    "ResidualSpec",
    "column_devices",
    "column_mesh",
    "lsq_jacobian",
    "lsq_residual",
]

COLUMN_AXIS = "cols"


class ResidualSpec(NamedTuple):
    """Static description of the stacked residual: one function and size per block."""

    fns: tuple[Callable[[jax.Array, Any], jax.Array], ...]
    dims: tuple[int, ...]


class JacobianPlan(NamedTuple):
    """Static chunking of the Jacobian.

    Attributes:
        chunks: Columns per chunk: one entry (batched) or one per block (blocked).
        blocked: Whether each block's rows are computed on their own.
        num_devices: Devices in the 1-D column mesh (1: no sharding).
    """

    chunks: tuple[int, ...]
    blocked: bool = False
    num_devices: int = 1


def column_devices(num_devices: int, dim_x: int) -> int:
    """The number of devices to shard columns over: at most one per column.

    Raises:
        ValueError: If more devices are requested than the backend has.
    """
    available = len(jax.devices())
    if num_devices > available:
        raise ValueError(f"{num_devices=} exceeds the {available} available device(s)")
    return max(1, min(num_devices, dim_x))


def column_mesh(num_devices: int) -> Mesh:
    """The 1-D mesh the Jacobian's columns are split over (first devices, in order)."""
    return Mesh(np.asarray(jax.devices()[:num_devices]), (COLUMN_AXIS,))


def _block_fn(spec: ResidualSpec, data: tuple[Any, ...], i: int) -> Callable[[jax.Array], jax.Array]:
    params, weight = data[i]
    fn, dim = spec.fns[i], spec.dims[i]

    def block(x: jax.Array) -> jax.Array:
        out = fn(x, params)
        if out.shape != (dim,):
            raise ValueError(f"residual block {i} returned shape {out.shape}, expected ({dim},)")
        return weight * out

    return block


def lsq_residual(x: jax.Array, data: tuple[Any, ...], *, spec: ResidualSpec) -> jax.Array:
    """The weighted, stacked residual vector ``(dim_f,)``."""
    blocks = [_block_fn(spec, data, i)(x) for i in range(len(spec.fns))]
    return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks)


def _tangents(cols: jax.Array, n: int, dtype: Any) -> jax.Array:
    # One-hot rows for this chunk only; columns >= n (padding) give zero rows.
    return (cols[:, None] == jnp.arange(n, dtype=cols.dtype)[None, :]).astype(dtype)


def _fill_columns(
    J: jax.Array, fun: Callable[[jax.Array], jax.Array], x: jax.Array, row: int, chunk: int
) -> jax.Array:
    """Writes ``d fun / dx`` into rows ``row:row+rows`` of ``J``, ``chunk`` columns at a time."""
    n = x.shape[0]
    chunk = min(chunk, n)
    _, lin = jax.linearize(fun, x)
    push = jax.vmap(lin, out_axes=1)
    n_chunks = -(-n // chunk)

    def body(k: jax.Array, J: jax.Array) -> jax.Array:
        start = jnp.minimum(k * chunk, n - chunk)
        block = push(_tangents(start + jnp.arange(chunk), n, x.dtype))
        return jax.lax.dynamic_update_slice(J, block, (jnp.asarray(row, start.dtype), start))

    if n_chunks == 1:
        return body(jnp.asarray(0), J)
    return jax.lax.fori_loop(0, n_chunks, body, J)


def _sharded_block(
    fun: Callable[[jax.Array], jax.Array], x: jax.Array, rows: int, chunk: int, num_devices: int
) -> jax.Array:
    """The ``(rows, n)`` Jacobian of ``fun`` with column chunks dealt over a mesh."""
    n = x.shape[0]
    chunk = min(chunk, -(-n // num_devices))
    per_device = -(-n // (chunk * num_devices))
    width = per_device * chunk
    mesh = column_mesh(num_devices)
    _, lin = jax.linearize(fun, x)
    push = jax.vmap(lin, out_axes=1)
    starts = (jnp.arange(num_devices)[:, None] * per_device + jnp.arange(per_device)[None, :]) * chunk
    starts = jax.lax.with_sharding_constraint(starts, NamedSharding(mesh, PartitionSpec(COLUMN_AXIS)))

    def device_block(my_starts: jax.Array) -> jax.Array:
        def body(k: jax.Array, B: jax.Array) -> jax.Array:
            block = push(_tangents(my_starts[k] + jnp.arange(chunk), n, x.dtype))
            return jax.lax.dynamic_update_slice(B, block, (jnp.asarray(0, k.dtype), k * chunk))

        B = jnp.zeros((rows, width), x.dtype)
        if per_device == 1:
            return body(jnp.asarray(0), B)
        return jax.lax.fori_loop(0, per_device, body, B)

    B = jax.vmap(device_block, out_axes=1)(starts)  # (rows, devices, width)
    B = jax.lax.with_sharding_constraint(
        B, NamedSharding(mesh, PartitionSpec(None, COLUMN_AXIS, None))
    )
    return B.reshape(rows, num_devices * width)[:, :n]


def lsq_jacobian(
    x: jax.Array, data: tuple[Any, ...], *, spec: ResidualSpec, plan: JacobianPlan
) -> jax.Array:
    """The ``(dim_f, dim_x)`` Jacobian of `lsq_residual`, chunked as ``plan`` says."""
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {x.shape}")
    n_blocks = len(spec.fns)
    if len(plan.chunks) != (n_blocks if plan.blocked else 1):
        raise ValueError(f"plan has {len(plan.chunks)} chunk sizes for {n_blocks} block(s)")
    dim_f = sum(spec.dims)
    if plan.blocked:
        parts = [(_block_fn(spec, data, i), spec.dims[i], plan.chunks[i]) for i in range(n_blocks)]
    else:
        parts = [(lambda y: lsq_residual(y, data, spec=spec), dim_f, plan.chunks[0])]
    if plan.num_devices > 1:
        blocks = [_sharded_block(f, x, rows, c, plan.num_devices) for f, rows, c in parts]
        return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks)
    J = jnp.zeros((dim_f, x.shape[0]), x.dtype)
    row = 0
    for fun, rows, chunk in parts:
        J = _fill_columns(J, fun, x, row, chunk)
        row += rows
    return J
