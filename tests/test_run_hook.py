"""jaxcache run, stats and hook, in fresh processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from jaxcache import jaxformat, provenance
from jaxcache_testing import env_with, run_compile, version_folder

CHILD = """
import sys
import jax, jax.numpy as jnp
assert "jaxcache" not in sys.modules
f = jax.jit(lambda x: jnp.cos(x) @ x)
g = jax.jit(lambda x: jnp.exp(x).sum())
print(float(f(jnp.ones((3, 3))).sum()), float(g(jnp.ones(4))))
sys.exit(int(sys.argv[1]))
"""


def jaxcache(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # stdin is never a terminal here, whatever runs pytest: a prompt would be refused, never shown.
    return subprocess.run([sys.executable, "-m", "jaxcache", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600, stdin=subprocess.DEVNULL)


def test_run_counts_a_child_that_never_imports_jaxcache(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(CHILD))
    cache = tmp_path / "cache"
    first = jaxcache("--cache-dir", str(cache), "run", "--json", "--", sys.executable, str(child), "0")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert report["hits"] == 0 and report["misses"] == report["requests"] == report["writes"] > 0
    assert {"jit__lambda", "jit__lambda_"} & set(report["modules"])
    entries = list(version_folder(cache).glob("*-cache"))
    assert len(entries) == report["writes"]

    second = jaxcache("--cache-dir", str(cache), "run", "--json", "--", sys.executable, str(child), "7")
    assert second.returncode == 7  # passed through
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["misses"] == 0 and again["hits"] == report["requests"] and again["exit_code"] == 7
    assert again["saved_seconds"] > 0  # compile times recorded when the first run wrote them

    stats = json.loads(jaxcache("--cache-dir", str(cache), "stats", "--json").stdout)
    assert stats["runs"] == 2 and stats["hits"] == again["hits"] and stats["misses"] == report["misses"]
    refused = jaxcache("--cache-dir", str(cache), "stats", "--zero")  # resets like prune deletes: asks first
    assert refused.returncode == 2 and "--yes" in refused.stderr
    previewed = json.loads(jaxcache("--cache-dir", str(cache), "stats", "--zero", "--dry-run", "--json").stdout)
    assert previewed["zeroed"] is False and previewed["runs"] == 2
    zeroed = json.loads(jaxcache("--cache-dir", str(cache), "stats", "--zero", "--yes", "--json").stdout)
    assert zeroed["zeroed"] is True and zeroed["runs"] == 2  # what was reset, read in the same step
    after = json.loads(jaxcache("--cache-dir", str(cache), "stats", "--json").stdout)
    assert after["runs"] == 0 and after["hits"] == 0 and after["since"] is not None


def test_run_sums_every_python_process_of_the_command(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(CHILD))
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n{sys.executable} {child} 0\n{sys.executable} {child} 0\n")
    script.chmod(0o755)
    result = jaxcache("--cache-dir", str(tmp_path / "c"), "run", "--json", "--", str(script))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["processes"] == 2 and report["hits"] == report["misses"] > 0


KILLED_CHILD = CHILD.replace("sys.exit(int(sys.argv[1]))", "import os, signal; os.kill(os.getpid(), int(sys.argv[1]))")


@pytest.mark.parametrize("signum", [15, 9])
def test_a_child_killed_by_a_signal_is_counted_and_its_code_is_a_shells(tmp_path: Path, signum: int) -> None:
    # A job killed at its time limit (SIGTERM, then SIGKILL) runs no exit handler.
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(KILLED_CHILD))
    result = jaxcache("--cache-dir", str(tmp_path / "c"), "run", "--json", "--", sys.executable, str(child), str(signum))
    assert result.returncode == 128 + signum, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exit_code"] == 128 + signum and report["processes"] == 1
    assert report["misses"] >= 2 and report["writes"] >= 2, report


def test_run_with_a_missing_or_unrunnable_command(tmp_path: Path) -> None:
    # As a shell says it: 127 not found, 126 found but not runnable.
    result = jaxcache("--cache-dir", str(tmp_path / "c"), "run", "--", "no-such-program-xyz")
    assert result.returncode == 127 and "command not found: no-such-program-xyz" in result.stderr
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = jaxcache("--cache-dir", str(tmp_path / "c"), "run", "--", str(script))
    assert result.returncode == 126 and "cannot run" in result.stderr


BOOTSTRAP_FAILS = """
import sys
sys.modules["_jaxcache_bootstrap_provenance"] = None  # importing it now raises ImportError
"""


def test_a_process_that_cannot_be_counted_says_so_only_if_it_used_jax(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BOOTSTRAP_FAILS)  # chained before jaxcache's bootstrap runs
    env = env_with(PYTHONPATH=str(tmp_path))
    quiet = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "c"), "run", "--",
                            sys.executable, "-c", "print('no jax here')"], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0 and "not counted" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "c"), "run", "--",
                           sys.executable, "-c", "import jax"], capture_output=True, text=True, env=env)
    assert loud.returncode == 0 and "this process's cache use was not counted" in loud.stderr


def _old_version(root: Path, version: str = "0.0.1") -> list[Path]:
    """Real entries under a marker for an older jaxlib, as an earlier environment leaves them."""
    old = provenance.ensure_version_dir(root, provenance.VersionInfo(jaxlib=version, jax=version))
    copies = []
    for i, path in enumerate(sorted(version_folder_of(root).glob("*-cache"))):
        target = old / jaxformat.cache_file_name(f"{path.name[:-71]}-{'f' * 63}{i}")
        shutil.copy2(path, target)
        copies.append(target)
    return copies


def version_folder_of(root: Path) -> Path:
    return root / f"jaxlib-{metadata.version('jaxlib')}"


def test_hook_prunes_after_an_upgrade_and_then_does_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    run_compile(env_with(JAXCACHE_DIR=str(root)))
    old = _old_version(root)
    (root / ".jaxcache").mkdir(exist_ok=True)
    (root / ".jaxcache" / "hook.json").write_text(json.dumps({"highest_jaxlib": "0.0.1"}))
    current = sorted(version_folder_of(root).glob("*-cache"))

    state = (root / ".jaxcache" / "hook.json").read_text()
    # Like every deletion: without --yes and no terminal, refused (exit 2), nothing deleted,
    # the upgrade not recorded; the environment is still printed, so the job keeps its cache.
    for args in (["hook"], ["hook", "--json"]):
        refused = jaxcache("--cache-dir", str(root), *args)
        assert refused.returncode == 2, refused.stderr
        assert "--yes" in refused.stderr.strip().splitlines()[-1]
        assert "JAX_COMPILATION_CACHE_DIR" in refused.stdout
        assert all(p.exists() for p in old) and (root / ".jaxcache" / "hook.json").read_text() == state
    planned = jaxcache("--cache-dir", str(root), "hook", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["upgrade_prune"] == "dry-run" and all(p.exists() for p in old)
    assert sorted(plan["prune_plan"]["deleted"]) == sorted(p.name[: -len("-cache")] for p in old)

    first = jaxcache("--cache-dir", str(root), "hook", "--yes", "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["upgraded_from"] == "0.0.1" and data["pruned_entries"] == len(old)
    assert data["upgrade_prune"] == "done" and f"pruned {len(old)} entries" in first.stderr
    assert not any(p.exists() for p in old) and all(p.exists() for p in current)
    assert data["env"]["JAX_COMPILATION_CACHE_DIR"] == str(version_folder_of(root))

    state = (root / ".jaxcache" / "hook.json").read_text()
    second = jaxcache("--cache-dir", str(root), "hook", "--json")
    again = json.loads(second.stdout)
    assert again["upgraded_from"] is None and again["pruned_entries"] == 0 and second.stderr == ""
    assert (root / ".jaxcache" / "hook.json").read_text() == state


def test_hook_never_prunes_a_newer_or_kept_version(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    run_compile(env_with(JAXCACHE_DIR=str(root)))
    newer = _old_version(root, "99.0.0")  # another environment, ahead of this one
    data = json.loads(jaxcache("--cache-dir", str(root), "hook", "--json").stdout)
    assert data["pruned_entries"] == 0 and all(p.exists() for p in newer)

    root2 = tmp_path / "cache2"
    run_compile(env_with(JAXCACHE_DIR=str(root2)))
    kept = _old_version(root2, "0.0.1")
    (root2 / ".jaxcache").mkdir(exist_ok=True)
    (root2 / ".jaxcache" / "hook.json").write_text(json.dumps({"highest_jaxlib": "0.0.1"}))
    data = json.loads(jaxcache("--cache-dir", str(root2), "hook", "--json", "--keep-version", "0.0.1").stdout)
    assert data["upgraded_from"] == "0.0.1" and data["pruned_entries"] == 0 and all(p.exists() for p in kept)


def test_a_first_hook_reads_the_versions_already_here(tmp_path: Path) -> None:
    # Two environments already share the cache, and no hook has run: nothing is an upgrade.
    root = tmp_path / "cache"
    run_compile(env_with(JAXCACHE_DIR=str(root)))
    older = _old_version(root, "0.0.1")
    data = json.loads(jaxcache("--cache-dir", str(root), "hook", "--json").stdout)
    assert data["upgraded_from"] is None and data["pruned_entries"] == 0 and all(p.exists() for p in older)
    # Only an older version has been here: this first hook is the upgrade.
    root2 = tmp_path / "cache2"
    run_compile(env_with(JAXCACHE_DIR=str(root2)))
    older = _old_version(root2, "0.0.1")
    shutil.rmtree(version_folder_of(root2))
    data = json.loads(jaxcache("--cache-dir", str(root2), "hook", "--yes", "--json").stdout)
    assert data["upgraded_from"] == "0.0.1" and data["pruned_entries"] == len(older)
    assert not any(p.exists() for p in older)


def test_hook_output_sets_up_a_plain_jax_process(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    exports = jaxcache("--cache-dir", str(root), "hook", "--shell", "bash").stdout
    program = "import jax, jax.numpy as jnp; jax.jit(lambda x: x * 3)(jnp.ones(2)).block_until_ready()"
    subprocess.run(["bash", "-c", f"{exports}\n{sys.executable} -c '{program}'"], check=True, env=env_with(),
                   timeout=300)
    assert list(version_folder_of(root).glob("jit__lambda*-cache"))
    fish = jaxcache("--cache-dir", str(root), "hook", "--shell", "fish").stdout
    assert f"set -gx JAX_COMPILATION_CACHE_DIR '{version_folder_of(root)}';" in fish


def test_hook_imports_no_jax(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from jaxcache.cli import main\n"
        f"try:\n    main(['--cache-dir', {str(tmp_path / 'c')!r}, 'hook'])\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('JAX IMPORTED' if 'jax' in sys.modules else 'NO JAX', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "NO JAX"


@pytest.mark.parametrize("args", [["hook"], ["hook", "--shell", "fish"], ["hook", "--shell=zsh"]])
def test_the_fast_hook_prints_what_the_cli_prints(tmp_path: Path, args: list[str]) -> None:
    from click.testing import CliRunner

    from jaxcache.cli import main
    from jaxcache.launcher import plain_hook

    root = tmp_path / "c"
    assert plain_hook(["--cache-dir", str(root), *args]) is not None
    fast = jaxcache("--cache-dir", str(root), *args)  # python -m jaxcache: the launcher, without Click
    assert fast.returncode == 0, fast.stderr
    slow = CliRunner().invoke(main, ["--cache-dir", str(root), *args])
    assert slow.exit_code == 0 and slow.stdout == fast.stdout


@pytest.mark.parametrize("args", [["--cache-dir", " ", "hook"], ["hook", "--shell", "tcsh"], ["hook", "--json"],
                                  ["--cache-dir=", "hook"], ["hook", "--help"]])
def test_other_hook_calls_go_to_the_cli(tmp_path: Path, args: list[str]) -> None:
    from jaxcache.launcher import plain_hook

    assert plain_hook(args) is None
    result = jaxcache(*args)
    if "--json" in args:
        assert result.returncode == 0 and json.loads(result.stdout)["env"]
    elif "--help" in args:
        assert result.returncode == 0 and "Usage:" in result.stdout
    else:
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


SIGNALLED_CHILD = """
import signal, sys, time
from pathlib import Path
Path(sys.argv[1]).write_text("ready")
def stop(signum, frame):
    Path(sys.argv[1]).write_text(f"got {signum}")
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
time.sleep(120)
sys.exit(0)
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_run_passes_a_signal_sent_to_it_on_to_the_command(tmp_path: Path, signame: str) -> None:
    """docker stop, kill PID, a batch system's time limit: they signal `jaxcache run` alone."""
    import signal
    import time

    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(SIGNALLED_CHILD))
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "c"), "run", "--",
                             sys.executable, str(child), str(flag)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not flag.exists() and time.monotonic() < deadline:  # the command has its handlers in place
        time.sleep(0.05)
    assert flag.exists(), proc.communicate(timeout=60)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=60)
    assert flag.read_text() == f"got {getattr(signal, signame).value}", err
    assert proc.returncode == 3, err  # the command's own exit code, passed through


def test_a_version_folder_given_as_the_cache_is_never_nested(tmp_path: Path) -> None:
    """`jaxcache dir --jax` (and JAX_COMPILATION_CACHE_DIR) name the version folder: using it as the
    root writes there, not into a jaxlib-*/ inside it."""
    root = tmp_path / "cache"
    run_compile(env_with(JAXCACHE_DIR=str(root)))
    folder = version_folder(root)
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(CHILD))
    result = jaxcache("--cache-dir", str(folder), "run", "--json", "--", sys.executable, str(child), "0")
    assert result.returncode == 0, result.stderr
    assert not [p for p in folder.iterdir() if p.name.startswith("jaxlib-")]
    assert json.loads(result.stdout.strip().splitlines()[-1])["writes"] > 0
    assert list(folder.glob("jit__lambda*-cache"))
