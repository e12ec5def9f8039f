"""The fleet in job scripts: ``hook --remote`` (or ``remote = ...``) pulls before a job, ``run --push`` pushes after."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxcache.settings import resolve
from jaxcache_testing import compile_program
from test_fleet import (
    JAXLIB,
    cli,
    cli_json,
    compiled_no_solver_kernel,
    names_in,
    node_env,
    solve_counts,
    synthetic_cache,
    warmed,  # noqa: F401 (a fixture)
    warmed_once,  # noqa: F401 (a fixture)
)


def exported(stdout: str) -> dict[str, str]:
    """The variables a ``hook --shell bash`` output exports."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            out[name] = value.strip("'")
    return out


def test_hook_remote_pulls_before_the_job(warmed: Path, tmp_path: Path) -> None:  # noqa: F811
    remote = tmp_path / "shared"
    ci = node_env(tmp_path / "ci")
    assert cli_json("--cache-dir", str(warmed), "push", str(remote), env=ci)["ok"]
    node = node_env(tmp_path / "node")
    cache = tmp_path / "node-cache"
    proc = cli("--cache-dir", str(cache), "hook", "--remote", str(remote), env=node)
    assert proc.returncode == 0, proc.stderr
    assert exported(proc.stdout)["JAX_COMPILATION_CACHE_DIR"] == str(cache / f"jaxlib-{JAXLIB}")
    assert "pulled" in proc.stderr
    assert names_in(cache / f"jaxlib-{JAXLIB}") == names_in(warmed / f"jaxlib-{JAXLIB}")
    assert compiled_no_solver_kernel(solve_counts(cache, node))
    again = cli_json("--cache-dir", str(cache), "hook", "--remote", str(remote), env=node)
    assert again["pulled"]["fetched"] == 0 and again["pulled"]["here"] > 0


def test_remote_in_pyproject_is_pulled_by_the_plain_hook(tmp_path: Path) -> None:
    """`remote = "../shared"` is relative to the pyproject.toml; the plain `jaxcache hook` (the fast path) pulls."""
    source = synthetic_cache(tmp_path / "a", 4, tag="pp")
    env = node_env(tmp_path / "home")
    cli_json("--cache-dir", str(tmp_path / "a"), "push", str(tmp_path / "shared"), env=env)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.jaxcache]\ndir = ".jax-cache"\nremote = "../shared"\n')
    settings = resolve(cwd=project)
    assert settings.remote.value == str(tmp_path / "shared") and "pyproject" in settings.remote.source
    proc = cli("hook", env=env, cwd=project)
    assert proc.returncode == 0 and "pulled 4 objects" in proc.stderr, proc.stderr
    assert names_in(project / ".jax-cache" / f"jaxlib-{JAXLIB}") == names_in(source)


def test_a_hook_whose_remote_fails_still_gives_the_job_its_cache(tmp_path: Path) -> None:
    env = node_env(tmp_path / "home", JAXCACHE_REMOTE="s3://")
    proc = cli("--cache-dir", str(tmp_path / "c"), "hook", env=env)
    assert proc.returncode == 0 and "JAX_COMPILATION_CACHE_DIR" in proc.stdout
    assert "pull from s3:// failed" in proc.stderr


def test_run_push_pushes_after_the_job(tmp_path: Path) -> None:
    """A job configured only through the environment (it never imports jaxcache) compiles;
    `run --push` sends what it wrote, and another node pulls it."""
    env = node_env(tmp_path / "ci")
    cache = tmp_path / "ci-cache"
    remote = tmp_path / "shared"
    program = compile_program("")  # plain JAX: the cache comes from `jaxcache run`'s environment
    proc = cli("--cache-dir", str(cache), "run", "--json", "--push", str(remote), "--",
               sys.executable, "-c", program, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["writes"] > 0 and "pushed" in proc.stderr
    node = tmp_path / "node"
    pulled = cli_json("--cache-dir", str(node), "pull", str(remote), env=node_env(tmp_path / "node-home"))
    assert len(pulled["fetch"]) == report["writes"]
    assert names_in(node / f"jaxlib-{JAXLIB}") == names_in(cache / f"jaxlib-{JAXLIB}")


def test_run_push_keeps_the_commands_exit_code(tmp_path: Path) -> None:
    env = node_env(tmp_path / "ci")
    proc = cli("--cache-dir", str(tmp_path / "c"), "run", "--push", str(tmp_path / "shared"), "--",
               sys.executable, "-c", "raise SystemExit(3)", env=env)
    assert proc.returncode == 3
