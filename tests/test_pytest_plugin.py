"""The pytest plugin: a JAX suite under pytest-xdist shares one cache, and the summary counts it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from jaxcache import scan

SUITE = """
import jax, jax.numpy as jnp
import pytest

def model(x, w):
    return jnp.tanh(x @ w).sum()

@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_grad(n):
    # Every worker compiles the same programs at the same time: the race of jax#22718.
    g = jax.jit(jax.grad(model, argnums=1))
    assert g(jnp.ones((n, n)), jnp.eye(n)).shape == (n, n)
    assert float(jax.jit(model)(jnp.ones((2, 2)), jnp.eye(2))) > 0
"""

SUMMARY = re.compile(r"(\d+) compile requests, (\d+) hits, (\d+) misses.*?(\d+) entries written")


def _pytest(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], tuple[int, ...]]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", *args, str(folder)],
        capture_output=True, text=True, cwd=folder, timeout=600,
    )
    match = SUMMARY.search(proc.stdout)
    return proc, tuple(int(g) for g in match.groups()) if match else ()


def test_xdist_workers_share_one_cache(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_model.py").write_text(textwrap.dedent(SUITE))
    cache = tmp_path / "cache"

    first, (requests, hits, misses, writes) = _pytest(suite, "-n", "2", f"--jaxcache={cache}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert requests > 0 and misses > 0 and writes > 0
    # Why it compiled, for the session and its workers as one run: every function new here.
    assert "why it compiled:" in first.stdout and re.search(r"jit_\w+ \(\d+\): new: ", first.stdout), first.stdout
    entries = len(scan(cache).entries)
    assert entries > 0

    second, (requests2, hits2, misses2, _) = _pytest(suite, "-n", "2", f"--jaxcache={cache}")
    assert second.returncode == 0, second.stdout + second.stderr
    assert requests2 == requests and misses2 == 0 and hits2 == requests2
    assert "why it compiled:" not in second.stdout
    assert len(scan(cache).entries) == entries
    assert not list(cache.rglob(".jaxcache-tmp-*"))  # atomic writes leave no temporary file


def test_off_unless_asked(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_model.py").write_text(textwrap.dedent(SUITE))
    proc, counts = _pytest(suite)
    assert proc.returncode == 0 and counts == () and "jaxcache" not in proc.stdout


def test_a_bare_flag_before_a_test_path_does_not_take_it_as_the_folder(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    (suite / "sub").mkdir(parents=True)
    (suite / "test_top.py").write_text("def test_top():\n    pass\n")
    (suite / "sub" / "test_model.py").write_text(textwrap.dedent(SUITE))
    # An option that only sub/conftest.py defines: the path must be seen as one before options are checked.
    (suite / "sub" / "conftest.py").write_text(
        "def pytest_addoption(parser):\n    parser.addoption('--runslow', action='store_true')\n")
    cache = tmp_path / "configured"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--jaxcache", "sub", "--runslow"],
        capture_output=True, text=True, cwd=suite, timeout=600,
        env={**os.environ, "JAXCACHE_DIR": str(cache)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout  # sub/ only, not test_top.py
    assert not list((suite / "sub").glob("jaxlib-*")) and scan(cache).entries
