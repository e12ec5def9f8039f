"""`jaxcache explain`: real runs, real misses, each explained (issue 14).

Every run here is ``jaxcache run --json -- python PROGRAM`` in a fresh process
on a real cache; the program's function, its argument shape and x64 come from
its arguments and environment, so one change at a time is made between a run
that fills the cache and the run whose misses are explained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxcache_testing import env_with

PROGRAM = """
import sys
import jax, jax.numpy as jnp

size = int(sys.argv[1])
body = sys.argv[2]

@jax.jit
def model(x):
    return (jnp.sin(x) if body == "sin" else jnp.cos(x)) @ x.T

@jax.jit
def other(x):
    return jnp.exp(x).sum()

print(float(model(jnp.ones((size, size))).sum()))
if len(sys.argv) > 3:
    print(float(other(jnp.ones(size))))
"""


def run(root: Path, program: Path, *args: str, python: str = sys.executable, **env: str) -> dict:
    """``jaxcache run --json -- python PROGRAM ARGS``: its report (the last line of stdout)."""
    proc = subprocess.run([python, "-m", "jaxcache", "--cache-dir", str(root), "run", "--json", "--", python,
                           str(program), *args], capture_output=True, text=True, env=env_with(**env), timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def why(report: dict, module: str = "jit_model") -> dict:
    (found,) = [w for w in report["why"] if w["module"] == module]
    return found


def parts(explanation: dict) -> set[str]:
    return {d["part"] for d in explanation["differences"]}


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(PROGRAM))
    return path


@pytest.fixture
def filled(tmp_path: Path, program: Path) -> Path:
    """A cache filled by one run: model(8x8, sin), float32, one host device, no XLA flags."""
    root = tmp_path / "cache"
    first = run(root, program, "8", "sin")
    assert first["misses"] > 0 and why(first)["verdict"] == "new"
    return root


def test_hits_are_never_listed_as_misses(filled: Path, program: Path) -> None:
    again = run(filled, program, "8", "sin")
    assert again["misses"] == 0 and again["why"] == []
    result = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(filled), "explain", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and json.loads(result.stdout)["misses"] == []


def test_a_new_function(filled: Path, program: Path) -> None:
    report = run(filled, program, "8", "sin", "and other")
    assert why(report, "jit_other")["verdict"] == "new"
    assert all(w["module"] != "jit_model" for w in report["why"])  # it hit


def test_another_xla_flags_value(filled: Path, program: Path) -> None:
    report = run(filled, program, "8", "sin", XLA_FLAGS="--xla_cpu_enable_fast_math=true")
    found = why(report)
    assert found["verdict"] == "changed" and "XLA flags" in parts(found)
    assert "added --xla_cpu_enable_fast_math=true" in found["differences"][0]["what"]
    assert not parts(found) & {"computation", "jax_lib version", "accelerator_config"}


def test_two_host_devices_instead_of_one(filled: Path, program: Path) -> None:
    report = run(filled, program, "8", "sin", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    found = why(report)
    assert "accelerator_config" in parts(found) and "XLA flags" not in parts(found)  # JAX leaves that flag out
    (devices,) = [d for d in found["differences"] if d["part"] == "accelerator_config"]
    assert "made with 1 cpu device, this run had 2 cpu devices" in devices["what"]


def test_x64_on(filled: Path, program: Path) -> None:
    found = why(run(filled, program, "8", "sin", JAX_ENABLE_X64="1"))
    assert parts(found) == {"computation"} and "x64 on" in found["differences"][0]["what"]


def test_a_changed_function_body(filled: Path, program: Path) -> None:
    found = why(run(filled, program, "8", "cos"))
    assert parts(found) == {"computation"}
    assert "same argument shapes and dtypes" in found["differences"][0]["what"]


def test_the_same_function_at_a_new_shape(filled: Path, program: Path) -> None:
    found = why(run(filled, program, "16", "sin"))
    assert parts(found) == {"computation"}
    assert found["differences"][0]["what"] == "the program's arguments: (float32[8,8]) -> (float32[16,16])"


def test_zstandard_installed_between_two_runs(filled: Path, program: Path, tmp_path: Path) -> None:
    """zstandard importable changes the compression name in every key (a real zstandard, on PYTHONPATH)."""
    target = tmp_path / "zstd"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), "zstandard"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot install zstandard: {pip.stderr[-2000:]}")
        pytest.skip(f"cannot install zstandard here: {pip.stderr[-500:]}")
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    found = why(run(filled, program, "8", "sin", PYTHONPATH=path))
    assert parts(found) == {"compression"}
    assert "zlib -> zstandard" in found["differences"][0]["what"]


def test_explain_in_words_and_by_name(filled: Path, program: Path) -> None:
    run(filled, program, "16", "sin")
    text = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(filled), "explain"],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "jit_model: changed: the program's arguments" in text.stdout
    by_name = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(filled), "explain", "--name",
                              "jit_model", "--json"], capture_output=True, text=True, timeout=120)
    rows = json.loads(by_name.stdout)
    assert len(rows) == 2 and {r["module"] for r in rows} == {"jit_model"}
    assert any("float32[16,16]" in d["what"] for r in rows for d in r["differences"])
    listed = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(filled), "explain", "--list",
                             "--json"], capture_output=True, text=True, timeout=120)
    assert [r["misses"] > 0 for r in json.loads(listed.stdout)] == [True, True]


@pytest.mark.slow
def test_an_upgrade_between_two_real_jax_environments(tmp_path: Path, program: Path) -> None:
    """Filled under jax 0.10.2, run under the newest (0.12.0.1): the jaxlib version is named."""
    from test_jax_versions import JAX_0_10, NEWEST_JAX, _clean_env, jax_python

    root = tmp_path / "cache"
    reports = []
    for version in (JAX_0_10, NEWEST_JAX):
        python = str(jax_python(version))
        proc = subprocess.run([python, "-m", "jaxcache", "--cache-dir", str(root), "run", "--json", "--", python,
                               str(program), "8", "sin"], capture_output=True, text=True,
                              env=_clean_env(JAX_PLATFORMS="cpu"), timeout=600, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    found = why(reports[1])
    assert "jax_lib version" in parts(found)
    (jaxlib,) = [d for d in found["differences"] if d["part"] == "jax_lib version"]
    assert f"{JAX_0_10} -> {NEWEST_JAX}" in jaxlib["what"] and "prune --stale" in jaxlib["hint"]
