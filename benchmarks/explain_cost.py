"""What recording key parts for `jaxcache explain` costs a warmed run, side by side.

A warmed run is a fresh process that configures the cache (``jaxcache.configure()``)
and solves a bundled problem whose kernels are all in the cache. Recording makes
JAX log (and so hash twice) each key part of every kernel it looks up, and writes
nothing on a hit. Measured with the executable store off (``JAXCACHE_EXECUTABLES=0``),
so that every solver kernel goes through JAX's cache: the worst case for recording;
with the store on, the solver's kernels never reach JAX's cache at all.

Modes, in interleaved rounds on one warmed cache: recording on (the default) and
off (``JAXCACHE_RECORD_KEYS=0``). The ratio is the median over rounds of on/off,
with its quartiles, for in-process time (import + configure + first solve) and wall time.

Usage:
    python benchmarks/explain_cost.py [--problem kinetics --size 64] [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _common import PYTHON, clean_env, print_table, timed_run, write_json

SOLVE = r"""
import json, sys, time
t0 = time.perf_counter()
import jaxcache
jaxcache.configure(sys.argv[3])
import solver
objective, x0 = solver.problems.get(sys.argv[1], int(sys.argv[2]))
solver.least_squares(objective, x0)
print(json.dumps({"in_process": time.perf_counter() - t0}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="kinetics")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(JAXCACHE_EXECUTABLES="0", JAX_PLATFORMS="cpu")
        cmd = [PYTHON, "-c", SOLVE, args.problem, str(args.size), tmp]
        timed_run(cmd, env)  # fills the cache: every later run hits
        rounds = []
        for i in range(args.rounds):
            order = [("on", env), ("off", {**env, "JAXCACHE_RECORD_KEYS": "0"})]
            if i % 2:
                order.reverse()  # neither mode always goes first
            result = {}
            for mode, mode_env in order:
                wall, out = timed_run(cmd, mode_env)
                result[mode] = {"wall": wall, "in_process": json.loads(out)["in_process"]}
            rounds.append(result)

    def summary(field: str) -> dict[str, float]:
        ratios = sorted(r["on"][field] / r["off"][field] for r in rounds)
        q = statistics.quantiles(ratios, n=4)
        return {"median_ratio": statistics.median(ratios), "q1": q[0], "q3": q[2],
                "on_s": statistics.median(r["on"][field] for r in rounds),
                "off_s": statistics.median(r["off"][field] for r in rounds)}

    fields = {f: summary(f) for f in ("in_process", "wall")}
    print(f"{args.problem}-{args.size}, warmed, executable store off; {args.rounds} paired rounds")
    print_table(("time", "recording on (s)", "off (s)", "on/off median", "q1", "q3"),
                [(f, s["on_s"], s["off_s"], s["median_ratio"], s["q1"], s["q3"]) for f, s in fields.items()])
    write_json(args.json, {"problem": args.problem, "size": args.size, "rounds": rounds, "summary": fields})
    return 0


if __name__ == "__main__":
    sys.exit(main())
