"""Does `jaxcache warm --jobs 2` pay off? The same plan warmed into empty caches with 1 and 2 workers.

Runs are interleaved (1, 2, 1, 2, ...) so that machine noise hits both alike.

Usage:
    python benchmarks/warm_jobs.py [--problem bratu --problem spectral ...] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import PYTHON, clean_env, median, print_table, timed_run, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", action="append", help="default: rosenbrock, bratu, spectral (size 16)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    problems = args.problem or ["rosenbrock", "bratu", "spectral"]
    flags = [x for p in problems for x in ("--problem", p)] + ["--jac-chunk-size", "8"]
    times: dict[int, list[float]] = {1: [], 2: []}
    kernels = 0
    for _ in range(args.repeat):
        for jobs in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, out = timed_run([PYTHON, "-m", "jaxcache", "--cache-dir", tmp, "warm", "--json",
                                          "--jobs", str(jobs), *flags], clean_env())
                report = json.loads(out)
                # Kernels of equal shapes share a key (a 16x16 factor is a 16x16 factor), so a
                # few report "cached" within one plan; none may fail.
                assert report["failed"] == 0, report
                kernels = len(report["kernels"])
                times[jobs].append(seconds)
    one, two = median(times[1]), median(times[2])
    print(f"plan: {', '.join(problems)} (chunk 8): {kernels} kernels; fresh process, empty cache, median of {args.repeat}")
    print_table(("jobs", "seconds", "speedup"), [(1, one, 1.0), (2, two, one / two)])
    write_json(args.json, {"problems": problems, "kernels": kernels, "repeat": args.repeat,
                           "jobs1_s": times[1], "jobs2_s": times[2], "speedup": one / two})
    return 0


if __name__ == "__main__":
    sys.exit(main())
