"""Chunk-size trade-off of the solver's Jacobian on the ``spectral`` problem.

For each size and chunk size: the compiler's temp memory for the Jacobian
kernel (``compiled.memory_analysis().temp_size_in_bytes``) and the kernel's
run time (median of ``--repeats``; all chunk sizes of one problem size are
timed round-robin, so that load on the machine hits them alike). Fits
``memory = m0 + m1 * c`` (over chunks that run the rolled loop, ``c <
size``) and ``time = t0 + t1 / c``, prints a table, and checks the goals:
memory linear in ``c`` within 10%, and "auto" within 1.2x of the fastest
chunk that fits the budget.

Example:
    python benchmarks/solver_chunks.py --sizes 128 256 512 --x64 --repeats 15 \\
        --json benchmarks/results/solver_chunks.json --plot benchmarks/results/solver_chunks.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import solver  # noqa: E402
from solver.kernels import lsq_jacobian_jit  # noqa: E402


def _compile(size: int, chunk: int | str, budget: int | None) -> dict[str, Any]:
    objective, x0 = solver.problems.get("spectral", size, jac_chunk_size=chunk, memory_budget=budget, num_devices=1)
    objective.build(x0)
    x = np.asarray(x0 + 0.1, objective.dtype)
    spec = (jax.ShapeDtypeStruct(x.shape, x.dtype), objective.data)
    t = time.perf_counter()
    compiled = lsq_jacobian_jit.lower(*spec, spec=objective.spec, plan=objective.plan).compile()
    compile_s = time.perf_counter() - t
    stats = compiled.memory_analysis()
    compiled(x, objective.data).block_until_ready()
    model = objective.memory_models[0] if objective.memory_models else None
    return {
        "chunk": objective.jac_chunk_size,
        "temp_bytes": int(stats.temp_size_in_bytes) if stats is not None else None,
        "compile_seconds": compile_s,
        "model": model._asdict() if model is not None else None,
        "run": lambda: compiled(x, objective.data).block_until_ready(),
    }


def measure_size(size: int, chunks: list[int], repeats: int, budget: int | None) -> dict[str, Any]:
    """Compiles every chunk size and "auto", then times them round-robin."""
    auto = _compile(size, "auto", budget)
    rows = {c: _compile(size, c, budget) for c in sorted(set(chunks) | {auto["chunk"]})}
    times: dict[int, list[float]] = {c: [] for c in rows}
    order = list(rows)
    for r in range(repeats):
        for c in order[r % len(order):] + order[: r % len(order)]:
            t = time.perf_counter()
            rows[c]["run"]()
            times[c].append(time.perf_counter() - t)
    out = []
    for c, row in rows.items():
        row = {k: v for k, v in row.items() if k not in ("run", "model")}
        row["seconds"] = statistics.median(times[c])
        out.append(row)

    c = np.array([r["chunk"] for r in out], dtype=float)
    mem = np.array([r["temp_bytes"] for r in out], dtype=float)
    sec = np.array([r["seconds"] for r in out], dtype=float)
    # Chunks below size run the rolled loop the model describes; one chunk of
    # all columns is a different (loop-free) program, reported but not fitted.
    looped = c < size
    m1, m0 = np.polyfit(c[looped], mem[looped], 1)
    # Relative least squares (weights 1/t), so the many-ms small chunks do not
    # dominate the fit; the loop-free chunk is left out as for memory.
    t1, t0 = np.polyfit(1 / c[looped], sec[looped], 1, w=1 / sec[looped])
    mem_dev = float(np.max(np.abs(mem - (m0 + m1 * c))[looped] / np.maximum(mem[looped], 1)))
    budget_bytes = solver.memory_budget(budget)
    model = solver.MemoryModel(**auto["model"]) if auto["model"] else None
    fits = [r for r in out if model is None or model.predict(r["chunk"]) <= budget_bytes]
    fastest = min(fits or out, key=lambda r: r["seconds"])
    auto_seconds = next(r["seconds"] for r in out if r["chunk"] == auto["chunk"])
    return {
        "size": size, "rows": out, "auto_chunk": auto["chunk"], "auto_model": auto["model"],
        "fit": {"m0": m0, "m1": m1, "t0": t0, "t1": t1, "memory_max_deviation": mem_dev},
        "budget": budget_bytes, "fastest_fitting_chunk": fastest["chunk"],
        "fastest_seconds": fastest["seconds"], "auto_seconds": auto_seconds,
        "auto_ratio": auto_seconds / fastest["seconds"],
    }


def print_report(res: dict[str, Any], dtype: str) -> None:
    fit = res["fit"]
    print(f"\nspectral size {res['size']} ({jax.devices()[0].device_kind}, {dtype})")
    print(f"{'chunk':>6} {'temp MiB':>10} {'fit MiB':>10} {'ms':>9} {'fit ms':>9}")
    for r in res["rows"]:
        c = r["chunk"]
        mark = "  <- auto" if c == res["auto_chunk"] else ""
        print(f"{c:>6} {r['temp_bytes'] / 2**20:>10.3f} {(fit['m0'] + fit['m1'] * c) / 2**20:>10.3f} "
              f"{1e3 * r['seconds']:>9.3f} {1e3 * (fit['t0'] + fit['t1'] / c):>9.3f}{mark}")
    print(f"memory = {fit['m0'] / 2**20:.3f} MiB + {fit['m1'] / 2**10:.3f} KiB * c "
          f"(max deviation {100 * fit['memory_max_deviation']:.1f}% over c < {res['size']})")
    print(f"time   = {1e3 * fit['t0']:.3f} ms + {1e3 * fit['t1']:.3f} ms / c")
    print(f"auto: chunk {res['auto_chunk']} ({1e3 * res['auto_seconds']:.3f} ms); fastest that fits the "
          f"{res['budget'] / 2**20:.0f} MiB budget: chunk {res['fastest_fitting_chunk']} "
          f"({1e3 * res['fastest_seconds']:.3f} ms); ratio {res['auto_ratio']:.2f}")


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns 0 when both goals are met at every size, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--chunks", type=str, default=None, help="comma-separated (default: powers of 2 up to size, and size)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--memory-budget", type=int, default=None, help="bytes for 'auto' (default: device)")
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG")
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = "float64" if args.x64 else "float32"
    results = []
    for size in args.sizes:
        chunks = (
            [int(c) for c in args.chunks.split(",")]
            if args.chunks
            else sorted({min(2**k, size) for k in range(size.bit_length() + 1)})
        )
        res = measure_size(size, chunks, args.repeats, args.memory_budget)
        print_report(res, dtype)
        results.append(res)
    ok = all(r["fit"]["memory_max_deviation"] <= 0.10 and r["auto_ratio"] <= 1.2 for r in results)
    print(f"\ngoals (memory linear within 10%, auto within 1.2x of fastest): {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": jax.devices()[0].device_kind, "dtype": dtype, "repeats": args.repeats,
            "sizes": results, "goals_met": ok,
        }, indent=2))
    if args.plot:
        plot(args.plot, results, dtype, args.repeats)
    return 0 if ok else 1


def plot(path: Path, results: list[dict[str, Any]], dtype: str, repeats: int) -> None:
    """Memory and time against chunk size, one colour per problem size, fits drawn."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed; skipping the plot", file=sys.stderr)
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 6))
    for i, res in enumerate(results):
        color = f"C{i}"
        c = np.array([r["chunk"] for r in res["rows"]], dtype=float)
        mem = np.array([r["temp_bytes"] for r in res["rows"]], dtype=float) / 2**20
        ms = np.array([r["seconds"] for r in res["rows"]], dtype=float) * 1e3
        loop = c < res["size"]
        fit = res["fit"]
        grid = np.geomspace(1, res["size"] / 2, 200)
        for ax, y in ((ax1, mem), (ax2, ms)):
            ax.plot(c[loop], y[loop], "o", color=color, label=f"size {res['size']}: chunked loop")
            ax.plot(c[~loop], y[~loop], "o", mfc="none", color=color, markersize=9,
                    label=f"size {res['size']}: all columns at once (not fitted)")
        ax1.plot(grid, (fit["m0"] + fit["m1"] * grid) / 2**20, "-", color=color,
                 label=f"fit {fit['m0'] / 2**20:.2f} MiB + {fit['m1'] / 2**10:.1f} KiB × c "
                       f"(max dev {100 * fit['memory_max_deviation']:.1f}%)")
        ax2.plot(grid, 1e3 * (fit["t0"] + fit["t1"] / grid), "--", color=color,
                 label=f"fit {1e3 * fit['t0']:.3g} ms + {1e3 * fit['t1']:.3g} ms / c")
        a = res["auto_chunk"]
        ax2.plot([a], [1e3 * res["auto_seconds"]], "*", color=color, markersize=17, markeredgecolor="black",
                 label=f"auto = {a}: {res['auto_ratio']:.2f}x the fastest ({res['fastest_fitting_chunk']})")
    ax1.set(xscale="log", yscale="log", xlabel="chunk size c (Jacobian columns per pass)",
            ylabel="temp memory (MiB, compiled.memory_analysis())", title="Jacobian kernel temp memory")
    ax2.set(xscale="log", yscale="log", xlabel="chunk size c (Jacobian columns per pass)",
            ylabel=f"time per Jacobian (ms, median of {repeats})", title="Jacobian kernel time")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(f"Chunked forward-mode Jacobian of the spectral problem ({jax.devices()[0].device_kind}, {dtype})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
