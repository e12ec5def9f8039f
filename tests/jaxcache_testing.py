"""Helpers for jaxcache tests: fresh-process runners, a compile program, read-only folders."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

# A program that configures the cache through jaxcache, compiles three small
# functions and reports the persistent-cache hits and misses it saw, per module.
COMPILE_PROGRAM = r"""
import json, logging, sys
events = {"hits": [], "misses": []}
class Counter(logging.Handler):
    def emit(self, record):
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Persistent compilation cache hit"):
            events["hits"].append(record.args[0])
        elif msg.startswith("PERSISTENT COMPILATION CACHE MISS"):
            events["misses"].append(record.args[0])
compiler_logger = logging.getLogger("jax._src.compiler")
compiler_logger.setLevel(logging.DEBUG)
compiler_logger.addHandler(Counter())
compiler_logger.propagate = False
CONFIGURE
import jax, jax.numpy as jnp

def residual(x):
    return jnp.sin(x) * x - 1.0

@jax.jit
def step(x):
    return x - jnp.linalg.solve(jax.jacfwd(residual)(x) + 0.1 * jnp.eye(x.shape[0]), residual(x))

@jax.jit
def cost(x):
    return 0.5 * jnp.sum(residual(x) ** 2)

x = jnp.linspace(0.5, 1.5, 8)
for _ in range(2):
    x = step(x)
float(cost(x))
print("EVENTS" + json.dumps(events))
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts, or to find none)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_python(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs code in a fresh interpreter (the same virtual environment)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def compile_program(configure: str = "import jaxcache; jaxcache.configure()") -> str:
    return COMPILE_PROGRAM.replace("CONFIGURE", configure)


def run_compile(env: dict[str, str], configure: str = "import jaxcache; jaxcache.configure()",
                cwd: Path | None = None) -> dict[str, list[str]]:
    """Runs :data:`COMPILE_PROGRAM` in a fresh process; returns the hit/miss module names."""
    proc = run_python(compile_program(configure), env=env, cwd=cwd)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("EVENTS"))
    return json.loads(line[len("EVENTS"):])


_ISOLATED_VARS = ("JAXCACHE_", "JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "XLA_FLAGS", "JAX_PLATFORMS")


def env_with(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env


def version_folder(root: Path) -> Path:
    folders = [p for p in root.iterdir() if p.name.startswith("jaxlib-")]
    assert len(folders) == 1, folders
    return folders[0]


@contextmanager
def read_only_mount(path: Path) -> Iterator[None]:
    """Makes ``path`` a read-only filesystem (root ignores file modes, so chmod proves nothing)."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False, capture_output=True)


def can_mount() -> bool:
    if not shutil.which("mount") or os.geteuid() != 0:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"jaxcache-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        with read_only_mount(probe):
            pass
        return True
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def make_read_only(path: Path) -> contextmanager:
    """A read-only view of ``path``: a read-only bind mount as root, file modes otherwise."""
    if os.geteuid() == 0:
        return read_only_mount(path)

    @contextmanager
    def chmod_ro() -> Iterator[None]:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)

    return chmod_ro()
