"""How fast jaxcache reads a large cache, side by side with JAX's own eviction scan.

Builds a synthetic cache of N entries (each a real zlib entry with its -atime
file, so 2N files) and times, in one process on the same folder:

  - ``jaxcache inspect``            the first time (no index), from the index (after a change
                                    elsewhere), and on an unchanged cache (summary reused)
  - ``jaxcache prune --max-size``   scan + LRU plan, dry run (nothing deleted)
  - JAX ``LRUCache._evict_if_needed``  what JAX does on *every* write to a capped cache

Usage:
    python benchmarks/scan_100k.py [--entries 50000] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import build_synthetic_cache


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="build the cache here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from jax._src.lru_cache import LRUCache

    import jaxcache

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp) / "cache"
        if not any(folder.glob("*-cache")) if folder.exists() else True:
            print(f"building {args.entries} entries ({2 * args.entries} files) in {folder} ...", file=sys.stderr)
            build_synthetic_cache(folder, args.entries)
        total = sum(1 for _ in os.scandir(folder))
        info = jaxcache.scan(folder)
        cap = info.total_bytes // 2

        def inspect():
            return jaxcache.inspect_cache(folder, installed_version=None)

        def prune_plan():  # what `jaxcache prune --max-size --dry-run` does
            return jaxcache.plan_prune(jaxcache.scan(folder, quick=True), max_size=cap)

        jax_cache = LRUCache(str(folder), max_size=10**15)  # large: scans everything, evicts nothing

        summary_file = folder / ".jaxcache" / "summary.json"

        def inspect_without_reuse():  # as after a change elsewhere: the summary is recomputed from the index
            summary_file.unlink(missing_ok=True)
            return inspect()

        rows = []
        t_first, _ = timed(inspect, 1)  # no index yet: lists and stats everything, writes the index
        # The index and the summary are trusted only once the folder has not
        # changed for a couple of seconds (see jaxcache/index.py); a freshly built folder has.
        time.sleep(2.5)
        inspect()
        t_jax, _ = timed(jax_cache._evict_if_needed, args.repeat)
        t_index, summary = timed(inspect_without_reuse, args.repeat)
        inspect()
        assert summary_file.exists()
        t_inspect, _ = timed(inspect, args.repeat)
        t_prune, plan = timed(prune_plan, args.repeat)
        assert summary.entries == args.entries and len(plan.deletions) > 0
        rows.append(("JAX LRUCache._evict_if_needed", t_jax, 1.0))
        rows.append(("jaxcache inspect, first (no index)", t_first, t_jax / t_first))
        rows.append(("jaxcache inspect, from the index", t_index, t_jax / t_index))
        rows.append(("jaxcache inspect, unchanged cache", t_inspect, t_jax / t_inspect))
        rows.append(("jaxcache prune --max-size (plan)", t_prune, t_jax / t_prune))

    print(f"{args.entries} entries, {total} files, median of {args.repeat} runs, warm OS cache")
    print(f"{'operation':<36} {'seconds':>8} {'x faster than JAX':>18}")
    for name, seconds, speedup in rows:
        print(f"{name:<36} {seconds:>8.3f} {speedup:>18.1f}")
    if args.json:
        args.json.write_text(json.dumps({
            "entries": args.entries, "files": total, "repeat": args.repeat,
            "results": [{"operation": n, "seconds": s, "speedup_vs_jax": x} for n, s, x in rows],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
