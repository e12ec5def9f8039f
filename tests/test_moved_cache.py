"""A warmed cache copied to another path (another node, a container image, a bundle), on
each end of the supported range.

Whether the copy hits depends on two things: whether the entries carry the folder's
path in their compile options (JAX's default ``jax_persistent_cache_enable_xla_caches``,
which jaxcache keeps where a GPU plugin is installed or in the ``flat`` layout; on a CPU
machine it turns the sub-caches off), and whether the jaxlib hashes that path into the
key (up to 0.10; jax-ml/jax#35699 took it out in 0.11.0). Only where both hold does
the copy miss, and only there does ``check`` call its entries ``foreign-path``: an
"info" finding that ``--repair`` never deletes (a process pointed at the original
folder still hits them).

Every step runs in the release's own environment, in fresh processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_jax_versions import E2E_VERSIONS, TIMEOUT, _clean_env, jax_python

from jaxcache import jaxformat

PROBLEM = ("--problem", "bratu", "--size", "5")
SOLVER_KERNELS = {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"}
JAX_DEFAULT = "xla_gpu_per_fusion_autotune_cache_dir"  # JAX's own default for the sub-caches


def _jaxcache(python: Path, root: Path, *args: str, env: dict[str, str], cwd: Path) -> dict:
    proc = subprocess.run([str(python), "-m", "jaxcache", "--cache-dir", str(root), *args, "--json"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"jaxcache {' '.join(args)} (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-6000:]}"
    return json.loads(proc.stdout)


def _solve(python: Path, root: Path, *, env: dict[str, str], cwd: Path) -> dict[str, dict]:
    """A solve under ``jaxcache run --json`` in a fresh process: hits, misses and writes per solver kernel."""
    proc = subprocess.run([str(python), "-m", "jaxcache", "--cache-dir", str(root), "run", "--json", "--",
                           str(python), "-m", "solver", *PROBLEM], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    kernels = {m: c for m, c in report["modules"].items() if m.startswith("jit_lsq_")}
    assert set(kernels) == SOLVER_KERNELS, report["modules"]
    return kernels


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and ".jaxcache" not in p.relative_to(folder).parts
            and p.name != jaxformat.LOCKFILE_NAME}


@pytest.mark.slow
@pytest.mark.parametrize("xla_caches", [JAX_DEFAULT, "none"])
@pytest.mark.parametrize("jax_version", E2E_VERSIONS)
def test_a_copied_cache_hits_unless_its_jaxlib_keys_the_path(jax_version: str, xla_caches: str,
                                                              tmp_path: Path) -> None:
    python = jax_python(jax_version)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _clean_env(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(tmp_path / "config"),
                     XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), JAXCACHE_XLA_CACHES=xla_caches)
    root = tmp_path / "here" / "cache"
    warmed = _jaxcache(python, root, "warm", *PROBLEM, env=env, cwd=cwd)
    assert warmed["ok"] and warmed["compiled"] >= len(SOLVER_KERNELS), warmed
    folder = root / f"jaxlib-{jax_version}"
    entries = sorted(folder.glob("*-cache"))
    assert {p.name.rsplit("-", 2)[0] for p in entries} >= SOLVER_KERNELS, entries
    # Written an hour ago: check leaves entries younger than a few seconds alone (they may be mid-write).
    an_hour_ago = time.time() - 3600
    for path in entries:
        os.utime(path, (an_hour_ago, an_hour_ago))
    # What the entries carry: this folder's path with JAX's default sub-caches, none with them off (CPU).
    carried = {jaxformat.embedded_cache_dir(jaxformat.decompress_entry(p.read_bytes())) for p in entries}
    assert carried == ({str(folder)} if xla_caches == JAX_DEFAULT else {None}), carried

    copy = tmp_path / "there" / "copied-cache"
    shutil.copytree(root, copy, symlinks=True)
    copied = copy / f"jaxlib-{jax_version}"
    misses = xla_caches == JAX_DEFAULT and jaxformat.path_in_key(jax_version)

    checked = _jaxcache(python, copy, "check", env=env, cwd=cwd)
    assert checked["ok"] is True and checked["entries_checked"] == len(entries), checked
    if misses:
        assert {f["kind"] for f in checked["findings"]} == {"foreign-path"}, checked["findings"]
        assert sorted(Path(f["path"]) for f in checked["findings"]) == sorted(copied / p.name for p in entries)
        assert {f["severity"] for f in checked["findings"]} == {"info"}
        assert all(str(folder) in f["message"] for f in checked["findings"]), checked["findings"]
    else:
        assert checked["findings"] == [], checked["findings"]

    # --repair never deletes them: a process pointed at the original folder still hits them.
    before = _snapshot(copy)
    repaired = _jaxcache(python, copy, "check", "--repair", env=env, cwd=cwd)
    assert not any(f["repaired"] for f in repaired["findings"]), repaired
    assert [f["kind"] for f in repaired["findings"]] == [f["kind"] for f in checked["findings"]], repaired
    assert _snapshot(copy) == before

    # JAX's cache alone (the executable store, whose keys never held the path, switched off).
    solved = _solve(python, copy, env={**env, "JAXCACHE_EXECUTABLES": "0"}, cwd=cwd)
    if misses:
        assert all(c["hits"] == 0 and c["misses"] >= 1 for c in solved.values()), (jax_version, solved)
        assert len(list(copied.glob("*-cache"))) > len(entries)  # compiled again, under the copy's path
    else:
        assert all(c["hits"] >= 1 and c["misses"] == 0 and c["writes"] == 0 for c in solved.values()), \
            (jax_version, solved)
        assert _snapshot(copy) == before
