"""jaxcache against other JAX releases than the one in the test environment.

pyproject.toml claims ``jax>=0.6.1,<0.11``; the test environment has one JAX.
These tests build a separate virtual environment per JAX release (once; it is
kept under ``~/.cache/jaxcache-test-venvs`` or ``$JAXCACHE_TEST_VENVS`` and
reused while pyproject.toml is unchanged), install jaxcache into it from this
checkout, and drive it there in fresh processes.

:func:`jax_venv` is the reusable part: ``jax_venv("0.9.2")`` gives the
interpreter of an environment with that release.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import filelock
import pytest

REPO = Path(__file__).resolve().parents[1]

# The oldest release pyproject.toml claims (kept in step with its "jax>=..." pin).
OLDEST_JAX = "0.6.1"  # 0.6.0 is excluded: its CPU runtime reloads some executables wrongly

VENV_ROOT = Path(os.environ.get("JAXCACHE_TEST_VENVS") or Path.home() / ".cache" / "jaxcache-test-venvs")
MARKER = ".jaxcache-test-env.json"
MARKER_FORMAT = 1
TIMEOUT = 600  # seconds, for every pip or child-process call

# What pip prints when it cannot reach the package index (as opposed to a
# release that does not exist or a dependency conflict, which must fail).
_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|nodename nor servname|Network is unreachable|No route to host"
    r"|Connection refused|ConnectTimeoutError|ReadTimeoutError|Read timed out|Connection timed out"
    r"|ProxyError|SSLError|connection broken by|RemoteDisconnected|Could not fetch URL"
    r"|NameResolutionError|Failed to resolve"
)
_NOTHING_FOUND = re.compile(r"from versions: none|No matching distribution found")

# Copied into a scratch folder and installed from there, so that building
# never writes build/ or *.egg-info into the checkout.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".jax-cache", "tests", "benchmarks", "*.pyc",
)

# Variables that would make the environment's Python import something other
# than what is installed in it, or take cache settings from the caller.
_LEAKY_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
_ISOLATED_PREFIXES = ("JAXCACHE_", "JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "XLA_FLAGS", "JAX_PLATFORMS")


def _clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_VARS and not k.startswith(_ISOLATED_PREFIXES)}
    env["PYTHONNOUSERSITE"] = "1"
    env.update(overrides)
    return env


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha256_tree(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(_sha256_file(path).encode())
    return digest.hexdigest()


def _index_unreachable(python: Path) -> bool:
    """Whether pip cannot even list ``pip`` itself, which every index has.

    pip does not always name the network error (with ``PIP_RETRIES=0`` it only
    says "from versions: none"), so a failed lookup is checked this way.
    """
    try:
        proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "index", "versions", "pip"],
                              env=_clean_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return True
    return proc.returncode != 0 and "Available versions" not in proc.stdout


def _run(cmd: list[str], *, what: str, pip_python: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a setup command; skips if the package index cannot be reached, fails on anything else.

    ``pip_python``: the interpreter whose pip ``cmd`` runs, to probe the index with.
    """
    try:
        proc = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{what}: still running after {TIMEOUT} s:\n{out[-3000:]}")
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if _NETWORK_ERRORS.search(output) or (
            pip_python is not None and _NOTHING_FOUND.search(output) and _index_unreachable(pip_python)
        ):
            pytest.skip(f"{what}: the package index cannot be reached:\n{output[-1500:]}")
        pytest.fail(f"{what}: exit {proc.returncode}\n{output[-6000:]}")
    return proc


def _read_marker(venv: Path) -> dict | None:
    try:
        return json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(venv: Path, data: dict) -> None:
    tmp = venv / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, venv / MARKER)


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _works(python: Path, jax_version: str, jaxlib_version: str) -> bool:
    """Whether the environment still starts and has the releases it was built with."""
    if not python.exists():
        return False
    try:
        proc = subprocess.run(
            [str(python), "-c", "from importlib.metadata import version as v; print(v('jax'), v('jaxlib'), v('jaxcache'))"],
            env=_clean_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.split()[:2] == [jax_version, jaxlib_version]


def jax_venv(jax_version: str, jaxlib_version: str | None = None, *, root: Path = VENV_ROOT) -> Path:
    """The Python of a virtual environment with this JAX release and jaxcache from this checkout.

    Built once under ``root/jax-<version>-py<X.Y>`` and reused: all of it while
    pyproject.toml (dependencies, build requirements) is unchanged, with only
    jaxcache itself reinstalled when the checkout's sources changed. A marker
    file written last says a build completed; without it, or with another
    pyproject.toml, the folder is rebuilt from scratch. Safe to call from
    several pytest-xdist workers at once (a file lock serializes builds).

    Skips the calling test if the package index cannot be reached; fails on any
    other install error (e.g. pyproject.toml's pins exclude this release).
    """
    jaxlib_version = jaxlib_version or jax_version
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = root / f"jax-{jax_version}-py{py}"
    root.mkdir(parents=True, exist_ok=True)
    pyproject = REPO / "pyproject.toml"
    want = {
        "format": MARKER_FORMAT,
        "jax": jax_version,
        "jaxlib": jaxlib_version,
        "python": sys.version,
        "base_python": str(Path(sys.base_prefix).resolve()),
        "pyproject_sha256": _sha256_file(pyproject),
    }
    with filelock.FileLock(str(venv) + ".lock", timeout=2 * TIMEOUT):
        scratch = root / f".src-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            shutil.copytree(REPO, scratch, ignore=_NOT_SOURCE)
            source_hash = _sha256_tree(scratch)
            python = _venv_python(venv)
            marker = _read_marker(venv)
            reuse = (marker is not None and {k: marker.get(k) for k in want} == want
                     and _works(python, jax_version, jaxlib_version))
            pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
            if not reuse:
                shutil.rmtree(venv, ignore_errors=True)
                _run([sys.executable, "-m", "venv", str(venv)], what=f"creating a venv for jax {jax_version}")
                # The build requirements first, so that jaxcache can later be
                # reinstalled without build isolation (fast, and offline).
                build_requires = tomllib.loads(pyproject.read_text())["build-system"]["requires"]
                _run([*pip, "install", *build_requires], what=f"installing build requirements for jax {jax_version}",
                     pip_python=python)
                _run([*pip, "install", "--no-build-isolation", f"jax=={jax_version}", f"jaxlib=={jaxlib_version}",
                      str(scratch)], what=f"installing jax {jax_version} and jaxcache", pip_python=python)
            elif marker.get("source_sha256") != source_hash:
                _run([*pip, "install", "--no-build-isolation", "--no-deps", "--force-reinstall", str(scratch)],
                     what=f"reinstalling jaxcache into the jax {jax_version} venv", pip_python=python)
            else:
                return python
            if not _works(python, jax_version, jaxlib_version):
                pytest.fail(f"the venv at {venv} does not report jax {jax_version} / jaxlib {jaxlib_version}")
            _write_marker(venv, {**want, "source_sha256": source_hash, "built": time.time()})
            return python
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def oldest_jax_python() -> Path:
    return jax_venv(OLDEST_JAX)


def test_oldest_jax_matches_pyproject() -> None:
    """OLDEST_JAX above must be the lower bound pyproject.toml claims."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {re.split(r"[<>=!~\s]", d, maxsplit=1)[0]: d for d in deps}
    for name in ("jax", "jaxlib"):
        lower = re.search(r">=\s*([0-9][0-9.]*)", pins[name])
        assert lower, pins[name]
        claimed = [int(p) for p in lower.group(1).split(".")]
        assert [int(p) for p in OLDEST_JAX.split(".")][: len(claimed)] == claimed, (pins[name], OLDEST_JAX)


# Configures the cache through jaxcache, compiles a few functions (a static
# argument, LAPACK, autodiff, vmap, a loop) and reports every persistent-cache
# hit and miss JAX logs, with its module name and key.
_COMPILE_PROGRAM = r"""
import json, logging, sys
from importlib.metadata import version

events = {"hits": [], "misses": []}

class Counter(logging.Handler):
    def emit(self, record):
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Persistent compilation cache hit"):
            events["hits"].append(list(record.args))
        elif msg.startswith("PERSISTENT COMPILATION CACHE MISS"):
            events["misses"].append(list(record.args))

compiler_logger = logging.getLogger("jax._src.compiler")
compiler_logger.setLevel(logging.DEBUG)
compiler_logger.addHandler(Counter(logging.DEBUG))
compiler_logger.propagate = False

import jaxcache
configured = jaxcache.configure(sys.argv[1])

import jax, jax.numpy as jnp
from functools import partial

def residual(x):
    return jnp.sin(x) * x - 1.0

@jax.jit
def newton_step(x):
    jac = jax.jacfwd(residual)(x) + 0.1 * jnp.eye(x.shape[0])
    return x - jnp.linalg.solve(jac, residual(x))

@partial(jax.jit, static_argnums=1)
def power(x, n):
    return x ** n

@jax.jit
def batched_cost(xs):
    return jax.vmap(lambda x: 0.5 * jnp.sum(residual(x) ** 2))(xs)

@jax.jit
def iterate(x):
    return jax.lax.fori_loop(0, 5, lambda i, y: y - 0.1 * jax.grad(lambda z: jnp.sum(residual(z) ** 2))(y), x)

x = jnp.linspace(0.5, 1.5, 8)
x = newton_step(newton_step(x))
float(power(x, 3).sum())
float(batched_cost(jnp.stack([x, x + 1.0])).sum())
float(iterate(x).sum())

print("RESULT" + json.dumps({
    **events,
    "jax": jax.__version__,
    "jaxlib": version("jaxlib"),
    "jaxcache_file": jaxcache.__file__,
    "jax_dir": str(configured.jax_dir),
}))
"""


def _compile(python: Path, root: Path, *, cwd: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([str(python), "-c", _COMPILE_PROGRAM, str(root)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"compile program failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}"
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT")), None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line[len("RESULT"):])


def _cli(python: Path, *args: str, cwd: Path, env: dict[str, str]) -> tuple[int, dict]:
    script = python.with_name("jaxcache.exe" if os.name == "nt" else "jaxcache")
    assert script.exists(), f"no jaxcache console script in {python.parent}"
    proc = subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"jaxcache {' '.join(args)} ({proc.returncode}): not JSON:\n{proc.stdout}\n{proc.stderr}")


@pytest.mark.slow
def test_oldest_jax_fills_and_hits_a_cache_jaxcache_reads(oldest_jax_python: Path, tmp_path: Path) -> None:
    python = oldest_jax_python
    root = tmp_path / "cache"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _clean_env(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(tmp_path / "config"),
                     XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))

    first = _compile(python, root, cwd=cwd, env=env)
    assert (first["jax"], first["jaxlib"]) == (OLDEST_JAX, OLDEST_JAX)
    assert Path(first["jaxcache_file"]).resolve().is_relative_to(python.parent.parent.resolve()), \
        f"jaxcache imported from {first['jaxcache_file']}, not from the venv"
    assert first["hits"] == [], first
    written = {key: module for module, key in first["misses"]}
    assert {"jit_newton_step", "jit_power", "jit_batched_cost", "jit_iterate"} <= set(written.values()), first
    jax_dir = Path(first["jax_dir"])
    on_disk = {p.name[: -len("-cache")] for p in jax_dir.glob("*-cache")}
    assert on_disk == set(written), (sorted(on_disk), sorted(written))

    second = _compile(python, root, cwd=cwd, env=env)
    assert second["misses"] == [], second
    assert {key: module for module, key in second["hits"]} == written
    assert {p.name[: -len("-cache")] for p in jax_dir.glob("*-cache")} == on_disk

    code, inspected = _cli(python, "--cache-dir", str(root), "inspect", "--json", cwd=cwd, env=env)
    assert code == 0, inspected
    assert inspected["entries"] == len(written)
    assert list(inspected["by_version"]) == [OLDEST_JAX], inspected["by_version"]
    assert inspected["by_version"][OLDEST_JAX]["entries"] == len(written)
    assert inspected["installed_version"] == OLDEST_JAX
    assert inspected["other_version_entries"] == 0
    assert list(inspected["by_platform"]) == ["cpu"], inspected["by_platform"]

    code, checked = _cli(python, "--cache-dir", str(root), "check", "--json", cwd=cwd, env=env)
    assert code == 0 and checked["ok"] is True, checked
    assert checked["entries_checked"] == len(written)

    code, pruned = _cli(python, "--cache-dir", str(root), "prune", "--stale", "--dry-run", "--json", cwd=cwd, env=env)
    assert code == 0, pruned
    assert pruned["deleted"] == [] and pruned["freed_bytes"] == 0, pruned
    assert pruned["kept_entries"] == len(written)
    assert {p.name[: -len("-cache")] for p in jax_dir.glob("*-cache")} == on_disk


@pytest.mark.slow
def test_oldest_jax_warmed_solve_hits_and_is_right(oldest_jax_python: Path, tmp_path: Path) -> None:
    """The whole point, on the oldest JAX: warm, then a real solve in a fresh process loads every
    solver kernel from the cache and still converges. (On jaxlib 0.6.0 the cached step kernel
    returned its loop's initial state, which is why 0.6.0 is excluded.)"""
    python = oldest_jax_python
    root = tmp_path / "cache"
    env = _clean_env(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(tmp_path / "config"),
                     XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    code, warmed = _cli(python, "--cache-dir", str(root), "warm", "--problem", "bratu", "--size", "5", "--json",
                        cwd=tmp_path, env=env)
    assert code == 0 and warmed["failed"] == 0 and warmed["compiled"] >= 4, warmed
    proc = subprocess.run(
        [str(python.with_name("jaxcache")), "--cache-dir", str(root), "run", "--json", "--",
         str(python), "-m", "solver", "--problem", "bratu", "--size", "5", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    solved, traffic = json.loads(lines[-2]), json.loads(lines[-1])
    assert solved["success"] is True and solved["cost"] < 1e-10, solved
    kernels = {m: c for m, c in traffic["modules"].items() if m.startswith("jit_lsq_")}
    assert set(kernels) == {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"}, traffic
    assert all(c["misses"] == 0 and c["hits"] >= 1 for c in kernels.values()), kernels
