"""Last use is true (issue 11, part 3): uses recorded where jaxcache sees them, and ages the
file system cannot tell refused rather than guessed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from jaxcache import uses
from jaxcache.errors import UsageError
from jaxcache.prune import plan_prune
from jaxcache.scanning import scan
from jaxcache_testing import version_folder

DAY = 86400.0

CHILD = """
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cos(x) @ x)
g = jax.jit(lambda x: jnp.exp(x).sum())
print(float(f(jnp.ones((3, 3))).sum()), float(g(jnp.ones(4))))
"""


def jaxcache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jaxcache", *args], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def test_a_run_records_what_it_hit_and_prune_keeps_it(tmp_path: Path) -> None:
    """The trial's case: entries read once since they were written (so relatime will not move
    their access time again for a day) are hit by a run; `prune --older-than 2m` must keep them."""
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(CHILD))
    cache = tmp_path / "cache"
    first = jaxcache("--cache-dir", str(cache), "run", "--", sys.executable, str(child))
    assert first.returncode == 0, first.stderr
    entries = sorted(version_folder(cache).glob("*-cache"))
    written, read = time.time() - 600, time.time() - 540  # written 10 min ago, read once a minute later
    for path in entries:
        os.utime(path, (read, written))

    started = time.time()
    second = jaxcache("--cache-dir", str(cache), "run", "--json", "--", sys.executable, str(child))
    assert second.returncode == 0, second.stderr
    hit_modules = {m for m, c in json.loads(second.stdout.splitlines()[-1])["modules"].items() if c["hits"]}
    assert hit_modules

    listed = json.loads(jaxcache("--cache-dir", str(cache), "ls", "--json").stdout)
    for row in listed:
        if row["name"] in hit_modules:
            assert row["last_use_recorded"] is True, row
            assert row["last_used"] >= time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started - 60)), row
    plan = jaxcache("--cache-dir", str(cache), "prune", "--older-than", "2m", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    planned = {key.rsplit("-", 1)[0] for key in json.loads(plan.stdout)["deleted"]}
    assert not planned & hit_modules, planned


def _entries_written_then_read(folder: Path, ages: list[tuple[float, float]], now: float) -> list[Path]:
    """Real-looking entries (their bytes do not matter to planning) with (written, read) ages in seconds."""
    paths = []
    for i, (written_ago, read_ago) in enumerate(ages):
        path = folder / f"jit_f{i}-{i:064x}-cache"
        path.write_bytes(b"x\x9c")
        os.utime(path, (now - read_ago, now - written_ago))
        paths.append(path)
    return paths


@pytest.mark.parametrize("older_than_secs", [60.0, 3600.0, 6 * 3600.0, DAY - 1])
def test_an_age_finer_than_relatime_is_refused_only_where_it_matters(tmp_path: Path, older_than_secs: float) -> None:
    now = time.time()
    older_than = timedelta(seconds=older_than_secs)
    # Over the whole range of read ages around the cutoff: an entry read once since its write
    # (2 days ago) may have been used again any time within a day of that read.
    read_ages = [older_than_secs + f * DAY for f in (-0.5, 0.01, 0.5, 0.99, 1.01, 1.5)]
    for n, read_ago in enumerate(read_ages):
        folder = tmp_path / f"c{n}"
        folder.mkdir()
        _entries_written_then_read(folder, [(2 * DAY, read_ago)], now)
        unknowable = read_ago > older_than_secs and read_ago - DAY < older_than_secs
        info = scan(folder)
        if unknowable:  # older_than is finer than a day: refused, never guessed
            with pytest.raises(UsageError, match="no recorded use"):
                plan_prune(info, older_than=older_than, now=now, atime_resolution=DAY)
            # With a recorded use the plan is exact, whatever the file system says.
            uses.record_uses(folder, [p.name[:-6] for p in folder.glob("*-cache")], when=now - read_ago)
            plan = plan_prune(scan(folder), older_than=older_than, now=now, atime_resolution=DAY)
            assert len(plan.deletions) == 1
            uses.uses_path(folder).unlink()
        else:
            plan = plan_prune(info, older_than=older_than, now=now, atime_resolution=DAY)
            assert len(plan.deletions) == (1 if read_ago - DAY >= older_than_secs else 0), read_ago
        # At a day or more, an entry that may have been used within the period is kept.
        coarse = plan_prune(info, older_than=timedelta(days=1), now=now, atime_resolution=DAY)
        assert len(coarse.deletions) == (1 if read_ago >= 2 * DAY else 0), read_ago
        # strictatime: the access time is the last use.
        exact = plan_prune(info, older_than=older_than, now=now, atime_resolution=0.0)
        assert len(exact.deletions) == (1 if read_ago > older_than_secs else 0), read_ago


def test_an_entry_never_read_since_its_write_was_last_used_then(tmp_path: Path) -> None:
    """relatime moves the access time at the first read after a write: atime <= mtime means unread."""
    folder = tmp_path / "c"
    folder.mkdir()
    now = time.time()
    _entries_written_then_read(folder, [(600, 600), (7200, 7200)], now)
    plan = plan_prune(scan(folder), older_than=timedelta(minutes=30), now=now, atime_resolution=DAY)
    assert [d.entry.module for d in plan.deletions] == ["jit_f1"]


def test_noatime_refuses_any_age_for_unrecorded_entries(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    now = time.time()
    _entries_written_then_read(folder, [(30 * DAY, 30 * DAY)], now)
    with pytest.raises(UsageError, match="noatime"):
        plan_prune(scan(folder), older_than=timedelta(days=7), now=now, atime_resolution=float("inf"))
    uses.record_uses(folder, [f"jit_f0-{0:064x}"], when=now - 20 * DAY)
    assert len(plan_prune(scan(folder), older_than=timedelta(days=7), now=now,
                          atime_resolution=float("inf")).deletions) == 1


def test_the_use_log_keeps_the_last_use_and_compacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    monkeypatch.setattr(uses, "COMPACT_BYTES", 200)
    for when in (100.0, 300.0, 200.0):
        uses.record_uses(folder, ["jit_a-" + "a" * 64, "jit_b-" + "b" * 64], when=when)
    with open(uses.uses_path(folder), "ab") as f:
        f.write(b"torn-line-without-a-time")
    assert uses.load_uses(folder) == {"jit_a-" + "a" * 64: 300.0, "jit_b-" + "b" * 64: 300.0}
    assert uses.uses_path(folder).stat().st_size < 200  # rewritten with one line per key
    assert uses.load_uses(folder) == {"jit_a-" + "a" * 64: 300.0, "jit_b-" + "b" * 64: 300.0}
    uses.forget_uses(folder, ["jit_a-" + "a" * 64])
    assert uses.load_uses(folder) == {"jit_b-" + "b" * 64: 300.0}


def test_a_configured_process_records_its_hits_and_writes(tmp_path: Path) -> None:
    from jaxcache_testing import env_with, run_compile

    root = tmp_path / "cache"
    first = run_compile(env_with(JAXCACHE_DIR=str(root)))  # jaxcache.configure(), then three compiles
    folder = version_folder(root)
    written = uses.load_uses(folder)
    assert set(written) == {p.name[:-6] for p in folder.glob("*-cache")} and first["misses"]
    before = time.time()
    second = run_compile(env_with(JAXCACHE_DIR=str(root)))
    assert second["hits"] and not second["misses"]
    used = uses.load_uses(folder)
    assert all(used[key] >= before - 1 for key in written), (used, before)


def test_the_bootstrap_copy_of_the_meta_folder_name_is_the_index_one() -> None:
    from jaxcache.index import META_DIR_NAME

    source = Path(uses.__file__).read_text()
    assert f'META_DIR_NAME = "{META_DIR_NAME}"' in source
