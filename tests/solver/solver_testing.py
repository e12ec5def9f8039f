"""Helpers shared by the solver tests (a plain module: tests/solver is not a package,
so that it cannot shadow the `solver` package)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Runs ``code`` in a fresh interpreter at the repository root; returns stdout.

    Raises:
        AssertionError: With the child's stderr if it fails.
    """
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout
