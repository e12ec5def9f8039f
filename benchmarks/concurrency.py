"""How much concurrent maintenance slows JAX writers, and prune vs JAX's own eviction at 100k files.

Part 1, writers: N fresh JAX processes (default 4) each compile M distinct small
programs (the program of tests/test_concurrency.py) into one cache at once, in
these scenarios:

  - capped              jaxcache.configure(max_size=CAP): JAX's .lockfile and LRU eviction
  - capped + prune loop the same while `jaxcache prune --max-size` runs back to back
  - uncapped            no cap (no lock; jaxcache's atomic writes)
  - uncapped + prune loop

and reports, median over --repeat runs, the wall time until every writer is done and
the median writer's own compile-loop seconds (from its first jit to its last).

Part 2, eviction: a folder of E entries plus their -atime files (2E files), pruned
to half its size by `jaxcache prune --max-size` (a fresh process, end to end) and
by JAX's `LRUCache._evict_if_needed` with the max_size that forces the same
eviction (in-process, as JAX runs it on a write to a capped cache).

Usage:
    python benchmarks/concurrency.py [--writers 4] [--programs 12] [--repeat 3]
        [--entries 50000] [--json benchmarks/results/concurrency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import PYTHON, build_synthetic_cache, clean_env, print_table, write_json  # noqa: E402
from test_concurrency import WRITER_PROGRAM, parse_events  # noqa: E402

ENTRY_BYTES = 5_500  # about one of the writer program's entries


def run_writers(root: Path, script: Path, *, writers: int, programs: int, cap: int | None, prune_to: int | None,
                env: dict[str, str]) -> dict:
    subprocess.run([PYTHON, "-m", "jaxcache", "--cache-dir", str(root), "hook"], check=True, capture_output=True,
                   env=env)
    stop = threading.Event()
    prunes: list[int] = []

    def prune_loop() -> None:
        while not stop.is_set():
            proc = subprocess.run([PYTHON, "-m", "jaxcache", "--cache-dir", str(root), "prune", "--max-size",
                                   str(prune_to), "--yes", "--json"], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
            prunes.append(len(json.loads(proc.stdout)["deleted"]))

    thread = threading.Thread(target=prune_loop, daemon=True) if prune_to is not None else None
    start = time.perf_counter()
    if thread:
        thread.start()
    procs = [subprocess.Popen([PYTHON, str(script), str(root), "none" if cap is None else str(cap), str(programs),
                               str(w)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for w in range(writers)]
    results = [p.communicate() for p in procs]
    wall = time.perf_counter() - start
    stop.set()
    if thread:
        thread.join()
    for p, (out, err) in zip(procs, results):
        if p.returncode != 0:
            raise RuntimeError(err[-2000:])
    events = [parse_events(out) for out, _ in results]
    errors = sum(err.count("persistent compilation cache entry") for _, err in results)
    return {"wall": wall, "writer_seconds": statistics.median(e["seconds"] for e in events),
            "jax_evictions": sum(e.get("evicted", 0) for e in events), "prunes": len(prunes),
            "pruned_entries": sum(prunes), "jax_cache_warnings": errors}


def writers_part(args: argparse.Namespace, tmp: Path) -> list[dict]:
    script = tmp / "writer.py"
    script.write_text(WRITER_PROGRAM)
    cap = 12 * ENTRY_BYTES
    scenarios = [("capped", cap, None), ("capped + prune loop", cap, 8 * ENTRY_BYTES),
                 ("uncapped", None, None), ("uncapped + prune loop", None, 8 * ENTRY_BYTES)]
    rows = []
    for name, scenario_cap, prune_to in scenarios:
        runs = []
        for r in range(args.repeat):
            root = tmp / f"w-{len(rows)}-{r}"
            env = clean_env(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(tmp / "cfg"),
                            **({"JAXCACHE_MAX_SIZE": str(scenario_cap)} if scenario_cap else {}))
            runs.append(run_writers(root, script, writers=args.writers, programs=args.programs, cap=scenario_cap,
                                    prune_to=prune_to, env=env))
        rows.append({"scenario": name, "cap_bytes": scenario_cap, "prune_to_bytes": prune_to,
                     "wall_seconds": statistics.median(r["wall"] for r in runs),
                     "writer_seconds": statistics.median(r["writer_seconds"] for r in runs),
                     "jax_evictions": statistics.median(r["jax_evictions"] for r in runs),
                     "prunes": statistics.median(r["prunes"] for r in runs),
                     "pruned_entries": statistics.median(r["pruned_entries"] for r in runs),
                     "jax_cache_warnings": max(r["jax_cache_warnings"] for r in runs), "runs": runs})
    base = {"capped": rows[0], "uncapped": rows[2]}
    for row in rows:
        ref = base[row["scenario"].split(" ")[0]]
        row["slowdown"] = row["writer_seconds"] / ref["writer_seconds"]
    return rows


def eviction_part(args: argparse.Namespace, tmp: Path) -> list[dict]:
    from jax._src.lru_cache import LRUCache

    results: dict[str, list[float]] = {"jaxcache prune --max-size (fresh process, plan + delete)": [],
                                       "JAX LRUCache._evict_if_needed (in-process)": []}
    left: dict[str, int] = {}
    for r in range(args.eviction_repeat):
        for name in results:
            folder = tmp / f"evict-{r}-{len(left)}"
            total = build_synthetic_cache(folder, args.entries)
            target = total // 2
            start = time.perf_counter()
            if name.startswith("jaxcache"):
                proc = subprocess.run([PYTHON, "-m", "jaxcache", "--cache-dir", str(folder), "prune", "--max-size",
                                       str(target), "--yes", "--json"], capture_output=True, text=True,
                                      env=clean_env())
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr)
            else:
                LRUCache(str(folder), max_size=target)._evict_if_needed(additional_size=0)
            results[name].append(time.perf_counter() - start)
            left[name] = sum(1 for _ in folder.glob("*-cache"))
            subprocess.run(["rm", "-rf", str(folder)], check=True)
    jax_time = statistics.median(results["JAX LRUCache._evict_if_needed (in-process)"])
    return [{"operation": name, "seconds": statistics.median(times), "runs": times,
             "entries_before": args.entries, "entries_after": left[name],
             "vs_jax": jax_time / statistics.median(times)} for name, times in results.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--programs", type=int, default=12, help="distinct programs per writer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--eviction-repeat", type=int, default=3)
    parser.add_argument("--skip-writers", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        writer_rows = [] if args.skip_writers else writers_part(args, tmp)
        eviction_rows = eviction_part(args, tmp)

    if writer_rows:
        print(f"{args.writers} JAX writers x {args.programs} distinct programs, median of {args.repeat}:")
        print_table(("scenario", "wall s", "writer compile s", "slowdown", "JAX evictions", "prunes",
                     "pruned", "JAX cache warnings"),
                    [(r["scenario"], r["wall_seconds"], r["writer_seconds"], f"{r['slowdown']:.2f}x",
                      r["jax_evictions"], r["prunes"], r["pruned_entries"], r["jax_cache_warnings"])
                     for r in writer_rows])
        print()
    print(f"Evicting half of {args.entries} entries ({2 * args.entries} files), median of {args.eviction_repeat}:")
    print_table(("operation", "seconds", "entries left", "vs JAX"),
                [(r["operation"], r["seconds"], r["entries_after"], f"{r['vs_jax']:.1f}x") for r in eviction_rows])
    write_json(args.json, {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                           "writers": writer_rows, "eviction": eviction_rows,
                           "config": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
