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
to half its size by JAX's `LRUCache._evict_if_needed` with the max_size that
forces it (in-process, as JAX runs it on a write to a capped cache) and by
`jaxcache prune --max-size` (a fresh process, end to end: start-up, scan, plan,
delete) on a folder jaxcache never saw, on one an earlier `jaxcache inspect`
indexed (a first scan: it stats, so prune reads each file it deletes), and on
one jaxcache indexed as it grew (each entry proven when first seen, so prune
stats it and reads nothing). Each repeat runs the four side by side on
identical folders flushed to disk, in a rotated order, each starting on a quiet
disk (see `wait_for_quiet_disk`), and checks they keep the same entries; the
ratio is the median of each repeat's time over JAX's.

Usage:
    python benchmarks/concurrency.py [--writers 4] [--programs 12] [--repeat 3]
        [--entries 50000] [--eviction-repeat 5] [--eviction-dir DIR] [--skip-writers]
        [--json benchmarks/results/concurrency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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


JAX_EVICTION = "JAX LRUCache._evict_if_needed (in-process)"
PRUNE_FIRST = "jaxcache prune --max-size (fresh process, folder never scanned)"
PRUNE_INDEXED = "jaxcache prune --max-size (fresh process, folder indexed by an earlier inspect)"
PRUNE_FOLLOWED = "jaxcache prune --max-size (fresh process, folder indexed as it grew)"


def _inspect(folder: Path) -> None:
    subprocess.run([PYTHON, "-m", "jaxcache", "--cache-dir", str(folder), "inspect", "--json"],
                   check=True, stdout=subprocess.DEVNULL, env=clean_env())


def _disk_counters(folder: Path) -> tuple[int, ...] | None:
    """Writes, discards and I/Os in flight of the block device holding ``folder``
    (``/proc/diskstats``; None where there is none, e.g. tmpfs)."""
    dev = os.stat(folder).st_dev
    try:
        lines = Path("/proc/diskstats").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if (int(fields[0]), int(fields[1])) == (os.major(dev), os.minor(dev)):
            values = [int(v) for v in fields[3:]]
            return (values[4], values[8], *(values[11:12] or [0]))  # writes, in flight, discards
    return None


def wait_for_quiet_disk(folder: Path, *, most: float = 300.0) -> float:
    """Waits until the disk has no I/O in flight and its write and discard counts stay put
    for a second (at most ``most`` seconds); returns how long it waited.

    Deleting 100k files leaves the disk busy long after (on a mount with online
    ``discard``, minutes of TRIMs): whichever operation ran next would pay for
    the one before, so each timed operation starts on a quiet disk.
    """
    start = time.monotonic()
    before = _disk_counters(folder)
    while before is not None and time.monotonic() - start < most:
        time.sleep(1.0)
        now = _disk_counters(folder)
        if now == before and now[1] == 0:
            break
        before = now
    return time.monotonic() - start


def _proven(folder: Path) -> int:
    """How many entries the folder's index has proven (jaxcache/index.py)."""
    from jaxcache import index

    listing = index.load(folder)
    return 0 if listing is None else sum(row.proven for row in listing.caches.values())


def _cache_names(folder: Path) -> set[str]:
    return {n for n in os.listdir(folder) if n.endswith("-cache")}


def eviction_part(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Each repeat builds one identical folder per operation, flushes them to disk, then
    times the operations back to back in a rotated order; each must leave the same entries."""
    from jax._src.lru_cache import LRUCache

    base = args.eviction_dir or tmp
    base.mkdir(parents=True, exist_ok=True)
    names = (JAX_EVICTION, PRUNE_FIRST, PRUNE_INDEXED, PRUNE_FOLLOWED)
    runs: list[dict[str, float]] = []
    left: dict[str, int] = {}
    waited: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.eviction_repeat):
        folders = {name: Path(tempfile.mkdtemp(prefix=f"evict-{r}-", dir=base)) for name in names}
        # Followed: jaxcache saw the folder when it held one entry, the rest came later
        # (a folder's first scan only stats; files that appear later are proven when first seen).
        build_synthetic_cache(folders[PRUNE_FOLLOWED], 1)
        _inspect(folders[PRUNE_FOLLOWED])
        total = 0
        for folder in folders.values():
            total = build_synthetic_cache(folder, args.entries)
        target = total // 2
        time.sleep(2.5)  # an index proves only files older than its trust window (jaxcache/index.py)
        _inspect(folders[PRUNE_INDEXED])
        _inspect(folders[PRUNE_FOLLOWED])
        proven = {name: _proven(folders[name]) for name in (PRUNE_INDEXED, PRUNE_FOLLOWED)}
        if proven != {PRUNE_INDEXED: 0, PRUNE_FOLLOWED: args.entries}:
            raise RuntimeError(f"the folders are not in the states their rows name: {proven} entries proven")
        os.sync()  # every operation deletes files that are on disk, not dirty in memory
        times: dict[str, float] = {}
        for name in names[r % len(names):] + names[: r % len(names)]:
            folder = folders[name]
            waited[name].append(wait_for_quiet_disk(folder))
            start = time.perf_counter()
            if name == JAX_EVICTION:
                LRUCache(str(folder), max_size=target)._evict_if_needed(additional_size=0)
            else:
                proc = subprocess.run([PYTHON, "-m", "jaxcache", "--cache-dir", str(folder), "prune", "--max-size",
                                       str(target), "--yes", "--json"], capture_output=True, text=True,
                                      env=clean_env())
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr)
            times[name] = time.perf_counter() - start
        kept = {name: _cache_names(folder) for name, folder in folders.items()}
        if any(k != kept[JAX_EVICTION] for k in kept.values()):
            raise RuntimeError(f"the operations kept different entries: {({n: len(k) for n, k in kept.items()})}")
        left = {name: len(k) for name, k in kept.items()}
        runs.append(times)
        print(f"  run {r + 1}: " + ", ".join(f"{times[name]:.2f}s" for name in names), file=sys.stderr)
        for folder in folders.values():
            shutil.rmtree(folder)
    return [{"operation": name, "seconds": statistics.median(run[name] for run in runs),
             "runs": [run[name] for run in runs], "entries_before": args.entries, "entries_after": left[name],
             "waited_for_quiet_disk_seconds": waited[name],
             # paired: each run's ratio to JAX's eviction in the same repeat, then the median
             "ratio_to_jax": statistics.median(run[name] / run[JAX_EVICTION] for run in runs)}
            for name in names]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--programs", type=int, default=12, help="distinct programs per writer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--eviction-repeat", type=int, default=5)
    parser.add_argument("--eviction-dir", type=Path, help="build the evicted folders here (default: the temp dir)")
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
    where = args.eviction_dir or Path(tempfile.gettempdir())
    print(f"Evicting half of {args.entries} entries ({2 * args.entries} files) in {where}, median of "
          f"{args.eviction_repeat} (ratio: median over runs of each run's time / JAX's in the same run):")
    print_table(("operation", "seconds", "entries left", "time / JAX's"),
                [(r["operation"], r["seconds"], r["entries_after"], f"{r['ratio_to_jax']:.2f}")
                 for r in eviction_rows])
    write_json(args.json, {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                           "writers": writer_rows, "eviction": eviction_rows,
                           "config": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
