"""Memory budget and "auto" chunk sizing from the compiler's memory analysis.

The Jacobian kernel's peak memory is modelled as ``max(floor, m0 + m1 * chunk)``:

* ``m1`` and the chunk-independent part of ``m0`` come from compiling the
  kernel at probe chunk sizes and reading
  ``compiled.memory_analysis().temp_size_in_bytes``; arguments and the output
  (the Jacobian itself) are added to ``m0`` (and ``floor``).
* The probes are 8 and 16 columns. Where their temp sizes are equal, the peak
  is set by a chunk-independent phase of the program (XLA:CPU from jax 0.11.1
  reports such a flat temp size for small chunks: about 528 KB for chunks 1 to
  28 of `spectral` at 64 columns), so the probes go on doubling below ``dim_x``
  until the temp size grows, and one more probe half as far again gives the
  slope: ``floor`` is the flat size, and the model reproduces every probe.
* Where the analysis is missing (a backend without it) or never grows below
  ``dim_x``, the documented estimate is used instead, and a warning says so
  once: ``m1 = ESTIMATE_BYTES_PER_COLUMN_FACTOR * (dim_f + dim_x) * itemsize``
  (one tangent in and one out per column, doubled for intermediates). Problems
  of at most 8 columns, where there is nothing to choose, use it silently.

The budget is ``memory_budget`` when given; otherwise ``AUTO_MEMORY_FRACTION``
of free memory: on GPU/TPU from ``device.memory_stats()`` (``bytes_limit -
bytes_in_use``), on CPU the smaller of available RAM (``MemAvailable``) and
the cgroup's remaining limit (v2 ``memory.max``/``memory.current``, v1
``memory.limit_in_bytes``/``memory.usage_in_bytes``), since on clusters the
node's RAM is not the job's.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import jax
import numpy as np

from solver.jacobian import JacobianPlan, ResidualSpec

if TYPE_CHECKING:
    from solver.objective import ObjectiveFunction

__all__ = [
    "AUTO_MEMORY_FRACTION",
    "CPU_CHUNK_L2_FACTOR",
    "DEFAULT_L2_BYTES",
    "ESTIMATE_BYTES_PER_COLUMN_FACTOR",
    "MemoryModel",
    "available_memory",
    "cgroup_memory_available",
    "choose_chunk_size",
    "cpu_l2_bytes",
    "fit_memory_model",
    "memory_budget",
    "probe_chunk_sizes",
    "whole_jacobian_cap",
    "working_set_cap",
]

logger = logging.getLogger(__name__)

AUTO_MEMORY_FRACTION = 0.5
"""Share of free device memory "auto" plans for; the rest is for the SVD and the caller."""
ESTIMATE_BYTES_PER_COLUMN_FACTOR = 4
CPU_CHUNK_L2_FACTOR = 4
"""On CPU, "auto" aims one chunk's temp memory ``m1 * chunk`` at about this many
times the per-core L2 cache (a soft target; the budget stays a hard limit),
and takes all columns at once (the loop-free program) only when their temp
memory ``m1 * dim_x`` fits in L2 itself. A chunk is a ``(rows, chunk)``
block of tangents pushed through the residual: smaller chunks pay the loop
and re-read the residual's data per chunk, larger ones spill the block out
of the caches. Measured on `spectral` (benchmarks/solver_chunks.py, sizes
128-512, float32 and float64, 2 EPYC cores, 1 MiB L2 per core): the fastest
chunks had about 2-8 MiB of temp memory, chunks of 16+ MiB were 10-20%
slower, and the loop-free program 15-40% slower once past L2 (size 128,
float64: 2 MiB). See `choose_chunk_size` for the rounding."""
DEFAULT_L2_BYTES = 1 << 20
"""The L2 size assumed where sysfs does not tell it."""
_CPU_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
_UNLIMITED = 1 << 60
_CGROUP = Path("/sys/fs/cgroup")


class MemoryModel(NamedTuple):
    """Predicted peak bytes of a Jacobian kernel: ``max(floor, m0 + m1 * chunk)``.

    Attributes:
        m0: Chunk-independent bytes (arguments, output and fixed temporaries).
        m1: Bytes per column in a chunk.
        source: ``"compiler"`` (memory_analysis) or ``"estimate"`` (fallback).
        floor: Peak bytes of a chunk-independent phase of the program (0 if none seen).
        probes: The chunk sizes compiled to fit it (each a kernel to warm).
    """

    m0: float
    m1: float
    source: Literal["compiler", "estimate"]
    floor: float = 0.0
    probes: tuple[int, ...] = ()

    def predict(self, chunk: int) -> float:
        """Predicted peak bytes at ``chunk`` columns per chunk."""
        return max(self.floor, self.m0 + self.m1 * chunk)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_memory_available(root: Path = _CGROUP) -> int | None:
    """Bytes left under this process's cgroup memory limit, or None if unlimited/unknown."""
    for limit_file, usage_file in (
        (root / "memory.max", root / "memory.current"),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"),
    ):
        limit = _read_int(limit_file)
        if limit is None or limit >= _UNLIMITED:
            continue
        usage = _read_int(usage_file) or 0
        return max(limit - usage, 0)
    return None


def _ram_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device: jax.Device | None = None) -> int | None:
    """Free bytes on ``device`` (default: the first device), or None if unknown."""
    device = device if device is not None else jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 (some plugins raise instead of returning None)
            stats = {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    candidates = [v for v in (_ram_available(), cgroup_memory_available()) if v is not None]
    return min(candidates) if candidates else None


def memory_budget(explicit: int | None = None) -> int:
    """The bytes "auto" may plan for: ``explicit``, else a share of free memory.

    Raises:
        ValueError: If ``explicit`` is not a positive int.
    """
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, (int, np.integer)) or explicit <= 0:
            raise ValueError(f"{explicit=} must be a positive int (bytes)")
        return int(explicit)
    free = available_memory()
    if free is None:
        logger.warning("free memory unknown; planning chunk sizes for 1 GiB")
        free = 2 << 30
    return int(free * AUTO_MEMORY_FRACTION)


def probe_chunk_sizes(dim_x: int) -> tuple[int, int]:
    """The two chunk sizes the memory model is fitted at (equal when dim_x <= 8)."""
    low = min(dim_x, 8)
    return low, min(dim_x, 2 * low)


def probe_plan(objective: ObjectiveFunction, block: int | None, chunk: int) -> tuple[ResidualSpec, JacobianPlan, tuple]:
    """Static config and data of the single-device probe kernel for one block."""
    if block is None:
        return objective.spec, JacobianPlan(chunks=(chunk,)), objective.data
    spec = ResidualSpec(fns=(objective.spec.fns[block],), dims=(objective.spec.dims[block],))
    return spec, JacobianPlan(chunks=(chunk,)), (objective.data[block],)


Measure = Callable[[int], "dict[str, int] | None"]
"""The compiler's memory analysis of the probe kernel at a chunk size (None: there is none)."""

_MODELS: dict[tuple[object, ...], MemoryModel] = {}


def fit_memory_model(objective: ObjectiveFunction, *, block: int | None, measure: Measure) -> MemoryModel:
    """Fits the model for the whole objective (``block=None``) or one block.

    The objective must have resolved ``dim_x``, ``dtype`` and ``data``;
    ``measure(chunk)`` compiles the probe (`solver.kernels.probe_memory`).
    Models are remembered per process (AOT compiles are not cached in memory by JAX).
    """
    leaves, treedef = jax.tree_util.tree_flatten(objective.data)
    key = (
        objective.spec, block, objective.dim_x, np.dtype(objective.dtype).str, treedef,
        tuple((tuple(a.shape), np.dtype(a.dtype).str) for a in leaves),
    )
    if key not in _MODELS:
        _MODELS[key] = _fit(objective, block, measure)
    return _MODELS[key]


_SAID: set[str] = set()


def _fall_back(reason: str, n: int) -> None:
    """Says once per process why "auto" uses the estimate (only info for problems too small to matter)."""
    if n <= 8:
        logger.info("auto chunk size: %s; using the estimate", reason)
    elif reason not in _SAID:
        _SAID.add(reason)
        logger.warning("auto chunk size: %s; chunk sizes come from the estimate, not the compiler", reason)


def _fit(objective: ObjectiveFunction, block: int | None, measure: Measure) -> MemoryModel:
    n, itemsize = objective.dim_x, np.dtype(objective.dtype).itemsize
    rows = objective.dim_f if block is None else objective.spec.dims[block]
    jac_bytes = objective.dim_f * n * itemsize
    estimate_m1 = ESTIMATE_BYTES_PER_COLUMN_FACTOR * (rows + n) * itemsize
    temps: dict[int, float] = {}
    arguments: list[float] = []

    def probe(chunk: int) -> float | None:
        try:
            stats = measure(chunk)
        except Exception as err:  # noqa: BLE001 (backends without the analysis raise; the estimate stands in)
            logger.info("memory analysis of the %d-column probe failed: %s: %s", chunk, type(err).__name__, err)
            return None
        if stats is None:
            return None
        temps[chunk] = float(stats["temp_size_in_bytes"])
        arguments.append(float(stats["argument_size_in_bytes"]))
        return temps[chunk]

    def estimate(reason: str) -> MemoryModel:
        _fall_back(reason, n)
        fixed = jac_bytes + (arguments[0] if arguments else 2 * n * itemsize)
        return MemoryModel(fixed + (temps[min(temps)] if temps else 0.0), estimate_m1, "estimate",
                           probes=tuple(sorted(temps)))

    for chunk in sorted(set(probe_chunk_sizes(n))):
        if probe(chunk) is None:
            return estimate("the backend gives no memory analysis")
    if len(temps) < 2:
        return estimate(f"{n} columns are too few to fit a slope")
    fixed = jac_bytes + arguments[0]
    (c_a, t_a), (c_b, t_b) = sorted(temps.items())
    if t_b > t_a:  # growing from the first probes on: a line through them
        m1 = (t_b - t_a) / (c_b - c_a)
        return MemoryModel(fixed + t_a - m1 * c_a, m1, "compiler", probes=(c_a, c_b))
    # Flat: a chunk-independent phase sets the peak. Go up until the chunks' part shows.
    flat = max(temps.values())
    grown = None
    chunk = 2 * c_b
    while chunk < n:
        t = probe(chunk)
        if t is not None and t > flat:
            grown = chunk
            break
        chunk *= 2
    if grown is None:
        return estimate(f"the compiler's temp size does not grow with the chunk size below {n} columns")
    second = min(grown + grown // 2, n - 1)
    t_second = probe(second) if second > grown else None
    if t_second is None or t_second <= temps[grown]:
        return estimate(f"the compiler's temp size grows only at {grown} of {n} columns, too late to fit a slope")
    m1 = (t_second - temps[grown]) / (second - grown)
    return MemoryModel(fixed + temps[grown] - m1 * grown, m1, "compiler", floor=fixed + flat,
                       probes=tuple(sorted(temps)))


def choose_chunk_size(
    model: MemoryModel,
    budget: int,
    dim_x: int,
    *,
    num_devices: int = 1,
    working_set: int | None = None,
    whole_limit: int | None = None,
) -> int:
    """The chunk "auto" picks: the largest power of two that fits ``budget``.

    ``budget`` is a hard limit: the predicted peak ``m0 + m1 * chunk`` must fit.
    ``working_set`` (bytes, CPU only; see `CPU_CHUNK_L2_FACTOR`) is a soft
    target for one chunk's temp memory ``m1 * chunk``: the power of two
    nearest to ``working_set / m1`` (so between 0.7x and 1.4x of it), and
    all columns at once (a loop-free program) only when ``m1 * dim_x`` is
    within ``whole_limit`` (default ``working_set``). With several devices each holds its own chunk,
    so the columns a device handles (``ceil(dim_x / num_devices)``) bound
    the chunk. Chunks below that bound are powers of two, the sizes the
    compiler vectorizes best.
    """
    cap = -(-dim_x // num_devices)
    if model.m1 <= 0:
        return cap
    chunk = int((budget - model.m0) // model.m1) if model.floor <= budget else 0
    if chunk < 1:
        logger.warning(
            "the Jacobian needs about %.3g bytes even with chunk 1, over the %d-byte budget",
            model.predict(1), budget,
        )
    if working_set is not None:
        columns = working_set / model.m1
        target = 1 << max(0, round(math.log2(columns))) if columns >= 1 else 1
        limit = working_set if whole_limit is None else whole_limit
        if target >= cap and model.m1 * cap > limit and cap > 1:
            target = 1 << ((cap - 1).bit_length() - 1)  # the largest power of two below cap
        chunk = min(chunk, target)
    chunk = max(1, min(cap, chunk))
    return chunk if chunk == cap else 1 << (chunk.bit_length() - 1)


def _parse_size(text: str) -> int | None:
    text = text.strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1] in units:
            return int(text[:-1]) * units[text[-1]]
        return int(text)
    except ValueError:
        return None


def cpu_l2_bytes(root: Path = _CPU_CACHE) -> int:
    """The per-core L2 (unified or data) cache size from sysfs, else `DEFAULT_L2_BYTES`."""
    try:
        for index in sorted(root.glob("index*")):
            if (index / "level").read_text().strip() == "2" and (index / "type").read_text().strip() != "Instruction":
                size = _parse_size((index / "size").read_text())
                if size:
                    return size
    except OSError:
        pass
    return DEFAULT_L2_BYTES


def working_set_cap(device: jax.Device | None = None) -> int | None:
    """``CPU_CHUNK_L2_FACTOR * L2`` bytes on CPU; None (no target) on accelerators."""
    device = device if device is not None else jax.devices()[0]
    return CPU_CHUNK_L2_FACTOR * cpu_l2_bytes() if device.platform == "cpu" else None


def whole_jacobian_cap(device: jax.Device | None = None) -> int | None:
    """The L2 size on CPU: the most temp memory the loop-free all-columns chunk may take."""
    device = device if device is not None else jax.devices()[0]
    return cpu_l2_bytes() if device.platform == "cpu" else None
