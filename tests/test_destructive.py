"""One behaviour for everything that deletes or resets (issue 11, part 2).

`prune`, `clear`, `check --repair`, `stats --zero` and the upgrade prune of
`hook` each: print a plan first; `--dry-run` changes nothing; `--yes` goes
ahead; on a terminal they ask, and an answer of no changes nothing and exits 1;
without a terminal (and without `--yes`) they refuse with exit 2 and change
nothing. Each command runs in a fresh process, on a real cache; the terminal
is a real pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from jaxcache import jaxformat, provenance
from jaxcache_testing import version_folder


def jaxcache(root: Path, *args: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m jaxcache --cache-dir ROOT ARGS``: stdin a pseudo-terminal fed ``answer``, or /dev/null."""
    cmd = [sys.executable, "-m", "jaxcache", "--cache-dir", str(root), *args]
    if answer is None:
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode() + b"\n")  # held by the terminal until the prompt reads it
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=terminal, timeout=300)
    finally:
        os.close(terminal)
        os.close(controller)
    return proc


def age(paths: list[Path], seconds: float = 3600) -> None:
    past = time.time() - seconds
    for path in paths:
        os.utime(path, (past, past), follow_symlinks=False)


def state(root: Path) -> dict[str, bytes]:
    """What the commands may change: entries, -atime files, jaxcache's statistics and hook state, modes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.name in ("index", ".lockfile", ".jaxcache"):
            continue  # jaxcache's scan index (a cache of listings) and the lock it takes may appear
        if path.is_file() and not path.is_symlink():
            out[rel] = path.read_bytes()
        out[rel + ":mode"] = oct(path.lstat().st_mode).encode()
    return out


def _damaged(root: Path) -> None:
    folder = version_folder(root)
    victim = next(folder.glob("jit_step-*-cache"))
    victim.write_bytes(victim.read_bytes()[:100])  # a truncated entry: check --repair deletes it
    age(list(root.rglob("*-cache")))


def _with_stats(root: Path) -> None:
    meta = root / ".jaxcache"
    meta.mkdir(exist_ok=True)
    (meta / "stats.json").write_text(json.dumps({"runs": 3, "requests": 9, "hits": 6, "misses": 3, "writes": 3,
                                                 "compile_seconds": 1.5, "saved_seconds": 2.5, "since": 1e9}))


def _upgraded(root: Path) -> None:
    """Entries of an older jaxlib and a hook state that has only seen it: the next hook is an upgrade."""
    current = sorted(version_folder(root).glob("*-cache"))
    old = provenance.ensure_version_dir(root, provenance.VersionInfo(jaxlib="0.0.1", jax="0.0.1"))
    for i, path in enumerate(current):
        shutil.copy2(path, old / jaxformat.cache_file_name(f"jit_old{i}-{'e' * 64}"))
    meta = root / ".jaxcache"
    meta.mkdir(exist_ok=True)
    (meta / "hook.json").write_text(json.dumps({"highest_jaxlib": "0.0.1"}))


@dataclass(frozen=True)
class Destructive:
    name: str
    args: tuple[str, ...]
    arrange: Callable[[Path], None]
    done: Callable[[Path], bool]  # the deletion or reset happened
    dry_run_code: int = 0  # check exits 1 while problems remain


def _old_entries_gone(root: Path) -> bool:
    return not list((root / "jaxlib-0.0.1").glob("*-cache")) and bool(list(root.rglob("*-cache")))


def _no_entries(root: Path) -> bool:
    return not list(root.rglob("*-cache"))


COMMANDS = [
    Destructive("prune", ("prune", "--max-size", "0"), lambda root: None, _no_entries),
    Destructive("clear", ("clear",), lambda root: None, _no_entries),
    Destructive("check --repair", ("check", "--repair"), _damaged,
                lambda root: not list(version_folder(root).glob("jit_step-*-cache")), dry_run_code=1),
    Destructive("stats --zero", ("stats", "--zero"), _with_stats,
                lambda root: json.loads((root / ".jaxcache" / "stats.json").read_text())["runs"] == 0),
    Destructive("hook after an upgrade", ("hook",), _upgraded, _old_entries_gone),
]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_every_destructive_command_plans_asks_and_refuses_alike(command: Destructive, cache: Path) -> None:
    command.arrange(cache)
    before = state(cache)

    refused = jaxcache(cache, *command.args)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "--yes" in refused.stderr.strip().splitlines()[-1] and "Traceback" not in refused.stderr
    assert state(cache) == before

    with_json = jaxcache(cache, *command.args, "--json")  # no prompt either: --json never waits for an answer
    assert with_json.returncode == 2 and state(cache) == before

    planned = jaxcache(cache, *command.args, "--dry-run")
    assert planned.returncode == command.dry_run_code, (planned.stdout, planned.stderr)
    assert ("Would" in planned.stdout + planned.stderr) and state(cache) == before

    declined = jaxcache(cache, *command.args, answer="n")
    assert declined.returncode == 1, (declined.stdout, declined.stderr)
    assert "nothing was changed" in declined.stderr and state(cache) == before

    accepted = jaxcache(cache, *command.args, answer="y")
    assert accepted.returncode == 0, (accepted.stdout, accepted.stderr)
    assert command.done(cache)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_yes_goes_ahead_without_a_terminal(command: Destructive, cache: Path) -> None:
    command.arrange(cache)
    result = jaxcache(cache, *command.args, "--yes")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert command.done(cache)


def test_yes_and_dry_run_belong_to_the_destructive_forms(cache: Path) -> None:
    for args in (("check", "--yes"), ("check", "--dry-run"), ("stats", "--yes"), ("stats", "--dry-run")):
        result = jaxcache(cache, *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_a_repair_skips_an_entry_made_whole_since_the_check(cache: Path) -> None:
    """The plan is proved again at execution: a broken entry replaced by a whole one is not deleted."""
    from jaxcache.integrity import check, execute_repair, plan_repair
    from jaxcache.scanning import scan

    victim = next(version_folder(cache).glob("jit_step-*-cache"))
    whole = victim.read_bytes()
    victim.write_bytes(whole[:100])
    age(list(cache.rglob("*-cache")))
    plan = plan_repair(check(scan(cache)))
    assert [(r.finding.path, r.action) for r in plan.repairs] == [(victim, "delete")]
    victim.write_bytes(whole)  # JAX (or a pull) put a whole entry back meanwhile
    (outcome,) = execute_repair(plan).outcomes
    assert outcome.status == "skipped" and victim.read_bytes() == whole


def test_export_replaces_an_existing_file_only_when_asked(cache: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    refused = jaxcache(cache, "export", "-o", str(precious))
    assert refused.returncode == 2 and "--yes" in refused.stderr and precious.read_text() == "precious"
    declined = jaxcache(cache, "export", "-o", str(precious), answer="n")
    assert declined.returncode == 1 and precious.read_text() == "precious"
    replaced = jaxcache(cache, "export", "-o", str(precious), "--yes")
    assert replaced.returncode == 0, replaced.stderr
    assert precious.read_bytes()[:512] != b"precious"
    missing = jaxcache(cache, "export", "-o", str(tmp_path / "no" / "such" / "x.tar"))
    assert missing.returncode == 1 and "no folder" in missing.stderr and ".jaxcache-tmp" not in missing.stderr
