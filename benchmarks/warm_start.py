"""Does a warmed cache make the first real run fast? Cold vs warmed vs the floor, side by side.

For each bundled problem, in fresh processes (``python -m solver``):

- cold:    an empty cache; JAX traces, lowers and compiles every kernel.
- warmed:  after ``jaxcache warm`` of the same configuration; kernels load from the cache.
- floor:   ``import`` plus the same solve's compute, measured in one process on a second
           solve (nothing to trace, lower or compile): no cache can go below it.

The cache is configured through the environment exactly as ``jaxcache run`` and
``jaxcache hook`` do it. Also reported: how much of a warmed run is tracing and
lowering (never cached by JAX), measured in-process.

Usage:
    python benchmarks/warm_start.py [--problem bratu --size 24 ...] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import PYTHON, clean_env, median, print_table, timed_run, write_json

FLOOR = r"""
import json, sys, time
t0 = time.perf_counter()
import jax
import solver
t_import = time.perf_counter() - t0
problem, size = sys.argv[1], int(sys.argv[2])
objective, x0 = solver.problems.get(problem, size)
solver.least_squares(objective, x0)            # first solve: traces, compiles (or loads)
objective, x0 = solver.problems.get(problem, size)
t1 = time.perf_counter()
solver.least_squares(objective, x0)            # second solve: compute only
print(json.dumps({"import": t_import, "compute": time.perf_counter() - t1}))
"""

TRACE = r"""
import json, sys, time
import jax
import solver
problem, size = sys.argv[1], int(sys.argv[2])
objective, x0 = solver.problems.get(problem, size)
t0 = time.perf_counter()
lowered = [jax.jit(k.fn).lower(*k.args) for k in solver.kernels(objective, x0)]
print(json.dumps({"trace_lower": time.perf_counter() - t0, "kernels": len(lowered)}))
"""


def cache_env(root: Path) -> dict[str, str]:
    from jaxcache.configuration import cache_env as env_for, prepare_folder
    from jaxcache.settings import resolve

    settings = resolve(cache_dir=root)
    jax_dir, _ = prepare_folder(settings)
    return clean_env(**env_for(settings, jax_dir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", action="append", help="default: bratu, spectral, curvefit")
    parser.add_argument("--size", type=int, action="append", help="one per --problem (default 24, 256, 16)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    problems = args.problem or ["bratu", "spectral", "curvefit"]
    sizes = args.size or [24, 256, 16][: len(problems)]
    rows, results = [], []
    for problem, size in zip(problems, sizes):
        solve = [PYTHON, "-m", "solver", "--problem", problem, "--size", str(size)]
        cold, warmed, floor, trace = [], [], [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                cold.append(timed_run(solve, cache_env(Path(tmp)))[0])
        with tempfile.TemporaryDirectory() as tmp:
            env = cache_env(Path(tmp))
            timed_run([PYTHON, "-m", "jaxcache", "--cache-dir", tmp, "warm", "--problem", problem,
                       "--size", str(size)], env)
            for _ in range(args.repeat):
                warmed.append(timed_run(solve, env)[0])
                f = json.loads(timed_run([PYTHON, "-c", FLOOR, problem, str(size)], env)[1])
                floor.append(f["import"] + f["compute"])
                trace.append(json.loads(timed_run([PYTHON, "-c", TRACE, problem, str(size)], env)[1])["trace_lower"])
        c, w, f, t = median(cold), median(warmed), median(floor), median(trace)
        rows.append((f"{problem}-{size}", c, w, f, c / w, w / f, t))
        results.append({"problem": problem, "size": size, "cold_s": c, "warmed_s": w, "floor_s": f,
                        "cold_over_warmed": c / w, "warmed_over_floor": w / f, "trace_lower_s": t,
                        "cold_runs": cold, "warmed_runs": warmed, "floor_runs": floor})
    print(f"fresh processes, median of {args.repeat}; floor = import + compute of a second in-process solve")
    print_table(("problem", "cold s", "warmed s", "floor s", "cold/warmed", "warmed/floor", "trace+lower s"), rows)
    write_json(args.json, {"repeat": args.repeat, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
