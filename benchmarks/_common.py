"""Helpers shared by the benchmark scripts: timing fresh processes and printing tables."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

PYTHON = sys.executable


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without inherited cache settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAXCACHE_", "JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env.update(extra)
    return env


def timed_run(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of a fresh process (start to exit), and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, headers))] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: Path | None, data: object) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)


def build_synthetic_cache(folder: Path, entries: int) -> int:
    """``entries`` real-format zlib entries, each with its ``-atime`` record; returns
    the total bytes of the ``-cache`` files.

    As JAX leaves them: each ``-atime`` file holds its last use and was written
    then (so its mtime, which jaxcache reads, and its contents, which JAX reads,
    give the same LRU order), each ``-cache`` was written an hour before, and
    entry 0 is the least recently used.
    """
    folder.mkdir(parents=True, exist_ok=True)
    payload = zlib.compress((1).to_bytes(4, "big") + os.urandom(1500))
    first_use = time.time_ns() - entries * 1_000_000 - 60 * 10**9
    for i in range(entries):
        key = f"jit_fn{i % 97}-{i:064x}"
        used = first_use + i * 1_000_000
        cache, atime = folder / f"{key}-cache", folder / f"{key}-atime"
        cache.write_bytes(payload)
        atime.write_bytes(used.to_bytes(8, "little"))
        os.utime(cache, ns=(used - 3600 * 10**9, used - 3600 * 10**9))
        os.utime(atime, ns=(used, used))
    return entries * len(payload)
