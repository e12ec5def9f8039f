"""jaxcache against other JAX releases than the one in the test environment.

pyproject.toml claims ``jax>=0.6.1,<0.13``; the test environment has one JAX.
These tests build a separate virtual environment per JAX release (once; it is
kept under ``~/.cache/jaxcache-test-venvs`` or ``$JAXCACHE_TEST_VENVS`` and
reused while pyproject.toml is unchanged), with the Python that release needs
(0.11 and later: Python 3.12, found under ``pyenv root`` or on ``PATH``),
install jaxcache and its test extras into it from this checkout, and drive it
there in fresh processes.

:func:`jax_python` is the reusable part: ``jax_python("0.12.0.1")`` gives an
interpreter with that release: the test environment's own when it has it,
else one of :func:`jax_venv`.

Where something these tests need is missing (an interpreter, the package
index) they skip on a developer's machine and fail in CI (``CI=true``): CI
must never pass by leaving the other releases out.
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
from importlib import metadata
from pathlib import Path

import filelock
import pytest

REPO = Path(__file__).resolve().parents[1]

# The oldest and newest releases pyproject.toml claims (kept in step with its pins:
# test_the_tested_range_is_the_claimed_range checks both ends).
OLDEST_JAX = "0.6.1"  # 0.6.0 is excluded: its CPU runtime reloads some executables wrongly
NEWEST_JAX = "0.12.0.1"
# The newest release for Python 3.11 (the main test environment's JAX there).
JAX_0_10 = "0.10.2"
# Releases the slow end-to-end tests run on: both ends, and the last one before the
# folder path left the key (0.11.0) and JAX needed Python 3.12.
E2E_VERSIONS = (OLDEST_JAX, JAX_0_10, NEWEST_JAX)

# The oldest Python each release line needs: (first release, (major, minor)), newest first.
_MIN_PYTHON = (((0, 11), (3, 12)), ((0, 10), (3, 11)), ((0, 0), (3, 10)))

VENV_ROOT = Path(os.environ.get("JAXCACHE_TEST_VENVS") or Path.home() / ".cache" / "jaxcache-test-venvs")
MARKER = ".jaxcache-test-env.json"
MARKER_FORMAT = 2  # 2: the test extras are installed; the interpreter is chosen per release
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


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as GitHub, GitLab and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> None:
    """Something the test needs is missing: a skip on a developer's machine, a failure in CI."""
    if in_ci():
        pytest.fail(f"{reason}\n(CI=true: a missing prerequisite fails the run rather than skipping the test)")
    pytest.skip(reason)


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


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version)[:3])


def python_needed(jax_version: str) -> tuple[int, int]:
    """The oldest Python (major, minor) the registry serves this JAX release for."""
    return next(python for first, python in _MIN_PYTHON if _release(jax_version) >= first)


# --- Interpreters -------------------------------------------------------------------------------

_PROBE = "import sys, venv, ensurepip, ssl; print('%d.%d' % sys.version_info[:2]); print(sys.version)"


def _probe(candidate: Path) -> tuple[tuple[int, int], str] | None:
    """(major, minor) and the full version of an interpreter that starts and can build a
    venv and reach an index over TLS; None for anything else (a pyenv shim that is not
    selected, a broken or partial build)."""
    try:
        proc = subprocess.run([str(candidate), "-c", _PROBE], env=_clean_env(), capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) < 2 or not re.fullmatch(r"\d+\.\d+", lines[0]):
        return None
    major, minor = (int(n) for n in lines[0].split("."))
    return (major, minor), lines[1]


def _pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            proc = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            proc = None
        if proc is not None and proc.returncode == 0 and proc.stdout.strip():
            return Path(proc.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _candidates(major: int, minor: int) -> list[Path]:
    """Places a Python X.Y may be, best first: pyenv's builds (newest patch first), then PATH."""
    found: list[Path] = []
    root = _pyenv_root()
    if root is not None:
        builds = [p for p in (root / "versions").glob(f"{major}.{minor}.*")
                  if re.fullmatch(rf"{major}\.{minor}\.\d+", p.name)]
        for build in sorted(builds, key=lambda p: _release(p.name), reverse=True):
            found.append(build / "bin" / f"python{major}.{minor}")
    for name in (f"python{major}.{minor}", f"python{major}"):
        on_path = shutil.which(name)
        if on_path:
            found.append(Path(on_path))
    return found


def find_python(major: int, minor: int) -> tuple[Path, str] | None:
    """An interpreter of exactly Python ``major.minor`` that actually runs, with its full version."""
    for candidate in _candidates(major, minor):
        probed = _probe(candidate)
        if probed is not None and probed[0] == (major, minor):
            return candidate, probed[1]
    return None


def interpreter_for(jax_version: str) -> tuple[Path, str]:
    """The interpreter to build a venv for this JAX release from, with its full version.

    The running one when it is new enough (so the oldest releases run on the main
    environment's Python); else the oldest Python the release supports, found under
    ``pyenv root`` or on PATH and checked to run. Missing: a skip, or in CI a failure.
    """
    need = python_needed(jax_version)
    if sys.version_info[:2] >= need:
        return Path(sys.executable), sys.version
    found = find_python(*need)
    if found is None:
        where = ", ".join(str(c) for c in _candidates(*need)) or "none"
        _unavailable(f"jax {jax_version} needs Python {need[0]}.{need[1]}, and no working interpreter was found "
                     f"(pyenv root: {_pyenv_root()}; tried: {where})")
    return found


# --- Building environments ----------------------------------------------------------------------


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
    """Runs a setup command; an unreachable package index skips (fails in CI), anything else fails.

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
            _unavailable(f"{what}: the package index cannot be reached:\n{output[-1500:]}")
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
    """The Python of a virtual environment with this JAX release, and jaxcache with its
    test extras from this checkout.

    Built from the interpreter :func:`interpreter_for` picks, once, under
    ``root/jax-<version>-py<X.Y>``, and reused: all of it while pyproject.toml
    (dependencies, build requirements) and the interpreter are unchanged, with
    only jaxcache itself reinstalled when the checkout's sources changed. A
    marker file written last says a build completed; without it, or with
    another pyproject.toml, the folder is rebuilt from scratch. Safe to call from
    several pytest-xdist workers at once (a file lock serializes builds).

    Skips the calling test (fails it in CI) if the interpreter is missing or the
    package index cannot be reached; fails on any other install error (e.g.
    pyproject.toml's pins exclude this release).
    """
    jaxlib_version = jaxlib_version or jax_version
    base, base_version = interpreter_for(jax_version)
    py = ".".join(base_version.split()[0].split(".")[:2])
    venv = root / f"jax-{jax_version}-py{py}"
    root.mkdir(parents=True, exist_ok=True)
    pyproject = REPO / "pyproject.toml"
    want = {
        "format": MARKER_FORMAT,
        "jax": jax_version,
        "jaxlib": jaxlib_version,
        "python": base_version,
        "base_python": str(base.resolve()),
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
                _run([str(base), "-m", "venv", str(venv)], what=f"creating a Python {py} venv for jax {jax_version}")
                # The build requirements first, so that jaxcache can later be
                # reinstalled without build isolation (fast, and offline).
                build_requires = tomllib.loads(pyproject.read_text())["build-system"]["requires"]
                _run([*pip, "install", *build_requires], what=f"installing build requirements for jax {jax_version}",
                     pip_python=python)
                _run([*pip, "install", "--no-build-isolation", f"jax=={jax_version}", f"jaxlib=={jaxlib_version}",
                      f"{scratch}[test]"], what=f"installing jax {jax_version} and jaxcache[test]", pip_python=python)
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


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main_env_has(jax_version: str, jaxlib_version: str | None = None) -> bool:
    """Whether the test environment itself has this JAX release (and jaxcache from this checkout)."""
    import jaxcache

    return ((_installed("jax"), _installed("jaxlib")) == (jax_version, jaxlib_version or jax_version)
            and Path(jaxcache.__file__).resolve().parent == REPO / "jaxcache")


def jax_python(jax_version: str, jaxlib_version: str | None = None) -> Path:
    """An interpreter with this JAX release and jaxcache from this checkout: the test
    environment's own when it has that release, else :func:`jax_venv`'s."""
    if main_env_has(jax_version, jaxlib_version):
        return Path(sys.executable)
    return jax_venv(jax_version, jaxlib_version)


def jaxcache_home(python: Path) -> Path:
    """Where ``python`` imports jaxcache from: the checkout for the test environment, else its venv."""
    return REPO if python == Path(sys.executable) else python.parent.parent


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~\s\[;]", d, maxsplit=1)[0]: d for d in deps}


def test_the_tested_range_is_the_claimed_range() -> None:
    """OLDEST_JAX and NEWEST_JAX above are the two ends pyproject.toml claims, for jax and jaxlib."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    for name in ("jax", "jaxlib"):
        spec = Requirement(_pins()[name]).specifier
        assert Version(OLDEST_JAX) in spec and Version(NEWEST_JAX) in spec, (spec, OLDEST_JAX, NEWEST_JAX)
        lower = [s for s in spec if s.operator == ">="]
        upper = [s for s in spec if s.operator == "<"]
        assert len(lower) == 1 and len(upper) == 1, spec
        assert Version(lower[0].version) == Version(OLDEST_JAX), (spec, OLDEST_JAX)
        # The bound is the next minor release after the newest tested one: nothing untested is claimed.
        newest = Version(NEWEST_JAX)
        assert Version(upper[0].version) == Version(f"{newest.major}.{newest.minor + 1}"), (spec, NEWEST_JAX)


def test_each_release_gets_the_python_it_needs() -> None:
    assert python_needed("0.6.1") == (3, 10)
    assert python_needed("0.10.2") == (3, 11)
    assert python_needed("0.11.0") == python_needed("0.11.2") == python_needed(NEWEST_JAX) == (3, 12)


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_find_python_skips_interpreters_that_do_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyenv build that does not start, and a ``python3.12`` on PATH that is really another
    Python (or a pyenv shim refusing to run), are passed over for one that runs."""
    real = find_python(3, 12)
    if real is None:
        _unavailable("no working Python 3.12 on this machine")
    pyenv = tmp_path / "pyenv"
    _script(pyenv / "versions" / "3.12.99" / "bin" / "python3.12",  # newest patch: tried first
            'echo "pyenv: python3.12: command not found" >&2; exit 127')
    bin_dir = tmp_path / "bin"
    _script(bin_dir / "python3.12", 'echo 3.11; echo "3.11.7 (not what the name says)"')
    (bin_dir / "python3").symlink_to(real[0])
    monkeypatch.setenv("PYENV_ROOT", str(pyenv))
    monkeypatch.setenv("PATH", str(bin_dir))
    found = find_python(3, 12)
    assert found is not None, _candidates(3, 12)
    assert found[0] == bin_dir / "python3" and found[1] == real[1], found


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_missing_interpreter_skips_here_and_fails_in_ci(ci: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_MIN_PYTHON", (((0, 0), (3, 99)),))  # a Python nobody has
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception if ci else pytest.skip.Exception, match="needs Python 3.99"):
        interpreter_for(NEWEST_JAX)


@pytest.mark.parametrize("ci", ["true", ""])
def test_an_unreachable_index_skips_here_and_fails_in_ci(ci: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    # Nothing listens on port 9 (discard) here: every request to the index is refused at once.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    monkeypatch.setenv("CI", ci)
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "--no-deps", "-d",
           str(tmp_path / "dl"), "jaxcache-test-no-such-package"]
    with pytest.raises(pytest.fail.Exception if ci else pytest.skip.Exception, match="cannot be reached"):
        _run(cmd, what="downloading from an unreachable index", pip_python=Path(sys.executable))


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
@pytest.mark.parametrize("jax_version", E2E_VERSIONS)
def test_a_cache_filled_through_configure_hits_and_jaxcache_reads_it(jax_version: str, tmp_path: Path) -> None:
    python = jax_python(jax_version)
    root = tmp_path / "cache"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _clean_env(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(tmp_path / "config"),
                     XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))

    first = _compile(python, root, cwd=cwd, env=env)
    assert (first["jax"], first["jaxlib"]) == (jax_version, jax_version)
    assert Path(first["jaxcache_file"]).resolve().is_relative_to(jaxcache_home(python).resolve()), \
        f"jaxcache imported from {first['jaxcache_file']}, not from {jaxcache_home(python)}"
    assert first["hits"] == [], first
    written = {key: module for module, key in first["misses"]}
    assert {"jit_newton_step", "jit_power", "jit_batched_cost", "jit_iterate"} <= set(written.values()), first
    jax_dir = Path(first["jax_dir"])
    assert jax_dir == root / f"jaxlib-{jax_version}", jax_dir
    on_disk = {p.name[: -len("-cache")] for p in jax_dir.glob("*-cache")}
    assert on_disk == set(written), (sorted(on_disk), sorted(written))

    second = _compile(python, root, cwd=cwd, env=env)
    assert second["misses"] == [], second
    assert {key: module for module, key in second["hits"]} == written
    assert {p.name[: -len("-cache")] for p in jax_dir.glob("*-cache")} == on_disk

    code, inspected = _cli(python, "--cache-dir", str(root), "inspect", "--json", cwd=cwd, env=env)
    assert code == 0, inspected
    assert inspected["entries"] == len(written)
    assert list(inspected["by_version"]) == [jax_version], inspected["by_version"]
    assert inspected["by_version"][jax_version]["entries"] == len(written)
    assert inspected["installed_version"] == jax_version
    assert inspected["other_version_entries"] == 0
    assert list(inspected["by_platform"]) == ["cpu"], inspected["by_platform"]

    code, checked = _cli(python, "--cache-dir", str(root), "check", "--json", cwd=cwd, env=env)
    assert code == 0 and checked["ok"] is True, checked
    assert checked["findings"] == [], checked
    assert checked["entries_checked"] == len(written)

    code, pruned = _cli(python, "--cache-dir", str(root), "prune", "--stale", "--dry-run", "--json", cwd=cwd, env=env)
    assert code == 0, pruned
    assert pruned["deleted"] == [] and pruned["freed_bytes"] == 0, pruned
    assert pruned["kept_entries"] == len(written)
    assert {p.name[: -len("-cache")] for p in jax_dir.glob("*-cache")} == on_disk

    # A real prune by name: jit_power's entry goes, and only it; the next run recompiles just that.
    doomed = {key for key, module in written.items() if module == "jit_power"}
    code, pruned = _cli(python, "--cache-dir", str(root), "prune", "--name", "jit_power", "--yes", "--json",
                        cwd=cwd, env=env)
    assert code == 0 and pruned["dry_run"] is False, pruned
    assert sorted(pruned["deleted"]) == sorted(doomed), pruned
    assert {p.name[: -len("-cache")] for p in jax_dir.glob("*-cache")} == on_disk - doomed
    third = _compile(python, root, cwd=cwd, env=env)
    assert sorted(key for _, key in third["misses"]) == sorted(doomed), third
    assert {p.name[: -len("-cache")] for p in jax_dir.glob("*-cache")} == on_disk


@pytest.mark.slow
@pytest.mark.parametrize("jax_version", E2E_VERSIONS)
def test_a_warmed_solve_hits_every_solver_kernel_and_is_right(jax_version: str, tmp_path: Path) -> None:
    """The whole point, on every end of the range: warm, then a real solve in a fresh process
    loads every solver kernel from the cache and still converges. (On jaxlib 0.6.0 the cached
    step kernel returned its loop's initial state, which is why 0.6.0 is excluded.)"""
    python = jax_python(jax_version)
    root = tmp_path / "cache"
    env = _clean_env(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(tmp_path / "config"),
                     XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    code, warmed = _cli(python, "--cache-dir", str(root), "warm", "--problem", "bratu", "--size", "5", "--json",
                        cwd=tmp_path, env=env)
    assert code == 0 and warmed["failed"] == 0 and warmed["compiled"] >= 3, warmed
    assert warmed["jax_dir"] == str(root / f"jaxlib-{jax_version}"), warmed["jax_dir"]
    proc = subprocess.run(
        [str(python.with_name("jaxcache")), "--cache-dir", str(root), "run", "--json", "--",
         str(python), "-m", "solver", "--problem", "bratu", "--size", "5", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    solved, traffic = json.loads(lines[-2]), json.loads(lines[-1])
    assert solved["success"] is True and solved["cost"] < 1e-10, solved
    assert traffic["exit_code"] == 0 and traffic["processes"] == 1, traffic
    kernels = {m: c for m, c in traffic["modules"].items() if m.startswith("jit_lsq_")}
    assert set(kernels) == {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"}, traffic
    assert all(c["misses"] == 0 and c["writes"] == 0 and c["hits"] >= 1 for c in kernels.values()), kernels
