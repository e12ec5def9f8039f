"""Does a warmed cache make the first real run fast? Cold vs warmed vs the floor, side by side.

For each bundled problem, fresh processes each run one solve script that times,
inside the process, ``import jax, solver`` and a first solve, then a second
solve of a freshly built objective:

- cold:       an empty cache; JAX traces, lowers and compiles every kernel.
- jax cache:  after ``jaxcache warm``, with the executable store off
              (``JAXCACHE_EXECUTABLES=0``): JAX's persistent cache alone, so
              every kernel is still traced and lowered.
- warmed:     after ``jaxcache warm``, everything on: kernels load from the
              executable store, nothing is traced, lowered or compiled.
- floor:      import + the second solve of the warmed process (nothing left to
              load or compile): no cache can go below it.

Also measured, in its own fresh process: jaxlib's own LAPACK initialization
(it imports all of scipy.linalg), which every process that runs a CPU
factorization pays once, in its first solve, and the floor's second solve does
not. A warmed run with the executable store loads only the two modules it
reads instead (see jaxcache.executables.prepare_runtime).

"in-process" is import + first solve, the quantity the floor is made of;
"wall" is the whole process from start to exit (adds interpreter start-up and
JAX's teardown, about 0.35 s here, to every mode alike). The cache is configured
through the environment exactly as ``jaxcache run`` and ``jaxcache hook`` do it.

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

SOLVE = r"""
import json, sys, time
t0 = time.perf_counter()
import jax
import solver
t_import = time.perf_counter() - t0
problem, size = sys.argv[1], int(sys.argv[2])
t1 = time.perf_counter()
objective, x0 = solver.problems.get(problem, size)
first = solver.least_squares(objective, x0)
t2 = time.perf_counter()
objective, x0 = solver.problems.get(problem, size)
second = solver.least_squares(objective, x0)
t3 = time.perf_counter()
assert first.success and second.success and first.nfev == second.nfev
print(json.dumps({"import": t_import, "first": t2 - t1, "second": t3 - t2}))
"""


LAPACK = r"""
import json, time
import jax, solver
from jaxlib import lapack
t0 = time.perf_counter()
lapack._lapack.initialize()
print(json.dumps({"lapack": time.perf_counter() - t0}))
"""


def cache_env(root: Path, **extra: str) -> dict[str, str]:
    from jaxcache.configuration import cache_env as env_for, prepare_folder
    from jaxcache.settings import resolve

    settings = resolve(cache_dir=root)
    jax_dir, _ = prepare_folder(settings)
    return clean_env(**env_for(settings, jax_dir), **extra)


def solve(problem: str, size: int, env: dict[str, str]) -> dict[str, float]:
    wall, out = timed_run([PYTHON, "-c", SOLVE, problem, str(size)], env)
    times = json.loads(out)
    return {"wall": wall, "in_process": times["import"] + times["first"], "floor": times["import"] + times["second"],
            "import": times["import"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", action="append", help="default: bratu, spectral, curvefit, kinetics")
    parser.add_argument("--size", type=int, action="append", help="one per --problem (default 24, 256, 16, 64)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    problems = args.problem or ["bratu", "spectral", "curvefit", "kinetics"]
    sizes = args.size or [24, 256, 16, 64][: len(problems)]
    lapack = median([json.loads(timed_run([PYTHON, "-c", LAPACK], clean_env())[1])["lapack"]
                     for _ in range(args.repeat)])
    rows, results = [], []
    for problem, size in zip(problems, sizes):
        cold, jax_only, warmed = [], [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                cold.append(solve(problem, size, cache_env(Path(tmp))))
        with tempfile.TemporaryDirectory() as tmp:
            env = cache_env(Path(tmp))
            timed_run([PYTHON, "-m", "jaxcache", "--cache-dir", tmp, "warm", "--problem", problem,
                       "--size", str(size)], env)
            for _ in range(args.repeat):  # interleaved, so drift hits both alike
                jax_only.append(solve(problem, size, {**env, "JAXCACHE_EXECUTABLES": "0"}))
                warmed.append(solve(problem, size, env))

        def m(runs: list[dict[str, float]], field: str) -> float:
            return median([r[field] for r in runs])

        c, j, w, f = m(cold, "in_process"), m(jax_only, "in_process"), m(warmed, "in_process"), m(warmed, "floor")
        cw, ww = m(cold, "wall"), m(warmed, "wall")
        rows.append((f"{problem}-{size}", c, j, w, f, c / w, w / f, cw, ww, cw / ww))
        results.append({
            "problem": problem, "size": size,
            "cold_s": c, "jax_cache_only_s": j, "warmed_s": w, "floor_s": f,
            "cold_over_warmed": c / w, "warmed_over_floor": w / f, "jax_cache_only_over_floor": j / f,
            "cold_wall_s": cw, "warmed_wall_s": ww, "cold_over_warmed_wall": cw / ww,
            "runs": {"cold": cold, "jax_cache_only": jax_only, "warmed": warmed},
        })
    print(f"fresh processes, median of {args.repeat}; in-process seconds = import + first solve; "
          "floor = import + a second solve in the warmed process")
    print(f"jaxlib's own LAPACK initialization (a first CPU solve without the store pays it): {lapack:.3f} s")
    print_table(("problem", "cold", "jax cache", "warmed", "floor", "cold/warmed", "warmed/floor",
                 "cold wall", "warmed wall", "wall ratio"), rows)
    write_json(args.json, {"repeat": args.repeat, "lapack_init_s": lapack, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
