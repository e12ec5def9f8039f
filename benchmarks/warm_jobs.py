"""Does `jaxcache warm --jobs 2` pay off? The same plan warmed into empty caches with 1 and 2 workers.

Two plans: the default one (the bundled problems at size 16, "auto" chunk sizes, whose
probes compile while each target is built) and a fixed-chunk plan (``--problem ...``
at chunk 8). Runs are interleaved (1, 2, 1, 2, ...) so that machine noise hits both
alike; CPU seconds (the process and its workers) show what the workers repeat.

Usage:
    python benchmarks/warm_jobs.py [--problem bratu --problem spectral ...] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

from _common import PYTHON, clean_env, median, print_table, timed_run, write_json


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(flags: list[str], jobs: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and kernel count of one warm into an empty cache."""
    with tempfile.TemporaryDirectory() as tmp:
        cpu = _children_cpu()
        seconds, out = timed_run([PYTHON, "-m", "jaxcache", "--cache-dir", tmp, "warm", "--json",
                                  "--jobs", str(jobs), *flags], clean_env())
        cpu = _children_cpu() - cpu
    report = json.loads(out)
    # Kernels of equal shapes share a key (a 16x16 factor is a 16x16 factor), so a
    # few may report "cached" within one plan; none may fail.
    assert report["failed"] == 0, report
    return seconds, cpu, len(report["kernels"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", action="append", help="fixed-chunk plan (default: rosenbrock, bratu, spectral)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    problems = args.problem or ["rosenbrock", "bratu", "spectral"]
    plans = {
        "default plan": [],
        f"{', '.join(problems)} (chunk 8)": [x for p in problems for x in ("--problem", p)] + ["--jac-chunk-size", "8"],
    }
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {name: {1: [], 2: []} for name in plans}
    kernels: dict[str, int] = {}
    for _ in range(args.repeat):
        for name, flags in plans.items():
            for jobs in (1, 2):
                seconds, cpu, kernels[name] = measure(flags, jobs)
                runs[name][jobs].append((seconds, cpu))
    print(f"fresh process, empty cache, median of {args.repeat}, {os.cpu_count()} cores")
    rows, out = [], {}
    for name in plans:
        one = median([s for s, _ in runs[name][1]])
        for jobs in (1, 2):
            wall = median([s for s, _ in runs[name][jobs]])
            cpu = median([c for _, c in runs[name][jobs]])
            rows.append((name, kernels[name], jobs, wall, cpu, one / wall))
        out[name] = {"kernels": kernels[name], "jobs1": runs[name][1], "jobs2": runs[name][2],
                     "speedup": one / median([s for s, _ in runs[name][2]])}
    print_table(("plan", "kernels", "jobs", "wall s", "cpu s", "speedup"), rows)
    write_json(args.json, {"repeat": args.repeat, "cores": os.cpu_count(), "plans": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
