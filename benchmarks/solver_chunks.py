"""Chunk-size trade-off of the solver's Jacobian on the ``spectral`` problem.

For each chunk size: the compiler's temp memory for the Jacobian kernel
(``compiled.memory_analysis().temp_size_in_bytes``) and the kernel's run time
(median of ``--repeats``). Fits ``memory = m0 + m1 * c`` and
``time = t0 + t1 / c``, prints a table, and checks the goals: memory linear in
``c`` within 10%, and "auto" within 1.2x of the fastest chunk that fits the
budget.

Example:
    python benchmarks/solver_chunks.py --size 256 --json results/chunks.json --plot chunks.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import solver  # noqa: E402
from solver.kernels import lsq_jacobian_jit  # noqa: E402


def measure(size: int, chunk: int | str, repeats: int, budget: int | None) -> dict[str, object]:
    """Compiles and times the Jacobian kernel at one chunk size."""
    objective, x0 = solver.problems.get("spectral", size, jac_chunk_size=chunk, memory_budget=budget, num_devices=1)
    objective.build(x0)
    x = np.asarray(x0 + 0.1, objective.dtype)
    args = (jax.ShapeDtypeStruct(x.shape, x.dtype), objective.data)
    t = time.perf_counter()
    compiled = lsq_jacobian_jit.lower(*args, spec=objective.spec, plan=objective.plan).compile()
    compile_s = time.perf_counter() - t
    stats = compiled.memory_analysis()
    compiled(x, objective.data).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        compiled(x, objective.data).block_until_ready()
        times.append(time.perf_counter() - t)
    model = objective.memory_models[0] if objective.memory_models else None
    return {
        "requested": chunk,
        "chunk": objective.jac_chunk_size,
        "temp_bytes": int(stats.temp_size_in_bytes) if stats is not None else None,
        "seconds": statistics.median(times),
        "compile_seconds": compile_s,
        "model": model._asdict() if model is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns 0 when both goals are met, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--chunks", type=str, default=None, help="comma-separated (default: powers of 2 up to size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-budget", type=int, default=None, help="bytes for 'auto' (default: device)")
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG")
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    chunks = (
        [int(c) for c in args.chunks.split(",")]
        if args.chunks
        else sorted({min(2**k, args.size) for k in range(args.size.bit_length() + 1)})
    )
    rows = [measure(args.size, c, args.repeats, args.memory_budget) for c in chunks]
    auto = measure(args.size, "auto", args.repeats, args.memory_budget)

    c = np.array([r["chunk"] for r in rows], dtype=float)
    mem = np.array([r["temp_bytes"] for r in rows], dtype=float)
    sec = np.array([r["seconds"] for r in rows], dtype=float)
    # Chunks below size run the rolled loop the model describes; one chunk of
    # all columns is a different (loop-free) program, reported but not fitted.
    looped = c < args.size
    m1, m0 = np.polyfit(c[looped], mem[looped], 1)
    t1, t0 = np.polyfit(1 / c, sec, 1)
    mem_fit = m0 + m1 * c
    mem_dev = float(np.max(np.abs(mem - mem_fit)[looped] / np.maximum(mem[looped], 1)))
    budget = solver.memory_budget(args.memory_budget)
    model = solver.MemoryModel(**{k: v for k, v in auto["model"].items()}) if auto["model"] else None
    fits = [r for r in rows if model is None or model.predict(r["chunk"]) <= budget]
    fastest = min(fits or rows, key=lambda r: r["seconds"])
    # Compare auto's chunk as measured in the same sweep when it is there (less noise).
    auto_seconds = next((r["seconds"] for r in rows if r["chunk"] == auto["chunk"]), auto["seconds"])
    auto_ratio = auto_seconds / fastest["seconds"]

    print(f"spectral size {args.size}, {jax.devices()[0].device_kind}, dtype {'float64' if args.x64 else 'float32'}")
    print(f"{'chunk':>6} {'temp MiB':>10} {'fit MiB':>10} {'ms':>9} {'fit ms':>9}")
    for r, mf in zip(rows, mem_fit):
        print(f"{r['chunk']:>6} {r['temp_bytes'] / 2**20:>10.3f} {mf / 2**20:>10.3f} "
              f"{1e3 * r['seconds']:>9.3f} {1e3 * (t0 + t1 / r['chunk']):>9.3f}")
    print(f"memory = {m0 / 2**20:.3f} MiB + {m1 / 2**10:.3f} KiB * c "
          f"(max deviation {100 * mem_dev:.1f}% over c < {args.size})")
    print(f"time   = {1e3 * t0:.3f} ms + {1e3 * t1:.3f} ms / c")
    print(f"auto: chunk {auto['chunk']} ({1e3 * auto_seconds:.3f} ms), fastest that fits the "
          f"{budget / 2**20:.0f} MiB budget: chunk {fastest['chunk']} ({1e3 * fastest['seconds']:.3f} ms), "
          f"ratio {auto_ratio:.2f}")
    report = {
        "size": args.size, "device": jax.devices()[0].device_kind, "x64": args.x64, "rows": rows,
        "auto": auto, "fit": {"m0": m0, "m1": m1, "t0": t0, "t1": t1, "memory_max_deviation": mem_dev},
        "budget": budget, "fastest_fitting_chunk": fastest["chunk"], "auto_ratio": auto_ratio,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        _plot(args.plot, c, mem, sec, (m0, m1, t0, t1), auto)
    return 0 if mem_dev <= 0.10 and auto_ratio <= 1.2 else 1


def _plot(path: Path, c: np.ndarray, mem: np.ndarray, sec: np.ndarray, fit: tuple, auto: dict) -> None:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed; skipping the plot", file=sys.stderr)
        return
    m0, m1, t0, t1 = fit
    grid = np.linspace(c.min(), c.max(), 200)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(c, mem / 2**20, "o", label="compiler temp")
    ax1.plot(grid, (m0 + m1 * grid) / 2**20, "-", label="m0 + m1 c")
    ax1.set(xlabel="chunk size c", ylabel="MiB", xscale="log", title="Jacobian temp memory")
    ax2.plot(c, 1e3 * sec, "o", label="measured")
    ax2.plot(grid, 1e3 * (t0 + t1 / grid), "-", label="t0 + t1 / c")
    ax2.axvline(auto["chunk"], color="gray", ls="--", label=f"auto ({auto['chunk']})")
    ax2.set(xlabel="chunk size c", ylabel="ms", xscale="log", title="Jacobian time")
    for ax in (ax1, ax2):
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
