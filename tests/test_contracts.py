"""The contract tests, run against the oldest and the newest JAX too.

A contract file pins facts about JAX that jaxcache relies on (the on-disk
format, every private touchpoint) against the *installed* JAX. The main test
environment runs them on its own JAX; here each runs again with
``python -m pytest`` inside an environment of every other release in
:data:`test_jax_versions.E2E_VERSIONS` (built once by ``jax_python``, with
jaxcache's test extras installed), so a fact that holds on one side of a JAX
change and not on the other fails here.

Adding a file to :data:`CONTRACT_FILES` is all it takes to run it on every
release. A contract test that depends on the release asserts the right fact for
the installed one rather than skipping, so a skip counts as a failure here.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_jax_versions import E2E_VERSIONS, REPO, TIMEOUT, _clean_env, jax_python, main_env_has

# Files (relative to the repository) that pin JAX facts; each must pass on every release.
CONTRACT_FILES = (
    "tests/test_jaxformat.py",
    "tests/test_jaxinternals.py",
)

# The releases the main environment does not have: it runs the contract files itself.
OTHER_VERSIONS = tuple(v for v in E2E_VERSIONS if not main_env_has(v))


@dataclass(frozen=True)
class Outcome:
    """One test case of the inner run: its id and what became of it."""

    test: str
    result: str  # "passed", "failed", "error" or "skipped"
    message: str = ""


def _outcomes(junit: Path) -> list[Outcome]:
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        result, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                result = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (node.get("message") or "") + "\n" + (node.text or "")
                break
        out.append(Outcome(test, result, message.strip()))
    return out


def _summary(stdout: str) -> str:
    """pytest's short summary (the failures themselves are reported above it)."""
    at = stdout.rfind("short test summary info")
    return stdout[stdout.rfind("\n", 0, at) + 1:] if at >= 0 else stdout[-3000:]


def test_contract_files_exist() -> None:
    for name in CONTRACT_FILES:
        assert (REPO / name).is_file(), f"{name} is listed in CONTRACT_FILES but does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("jax_version", OTHER_VERSIONS)
def test_the_contract_files_pass_on(jax_version: str, tmp_path: Path) -> None:
    python = jax_python(jax_version)
    junit = tmp_path / "junit.xml"
    cmd = [str(python), "-m", "pytest", "-q", "-rfEs", "--tb=short", "-p", "no:cacheprovider",
           f"--basetemp={tmp_path / 'basetemp'}", f"--junitxml={junit}", "-o", "junit_family=xunit2",
           *(str(REPO / name) for name in CONTRACT_FILES)]
    # Outside the checkout, so that `python -m` puts no source folder on sys.path: the
    # environment's own jaxcache is what the contract files import.
    proc = subprocess.run(cmd, cwd=tmp_path, env=_clean_env(PYTHONDONTWRITEBYTECODE="1"), capture_output=True,
                          text=True, timeout=2 * TIMEOUT, check=False)
    where = f"contract files on jax {jax_version} ({python})"
    assert junit.is_file(), f"{where}: pytest wrote no report (exit {proc.returncode}):\n" \
                            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    outcomes = _outcomes(junit)
    bad = [o for o in outcomes if o.result != "passed"]
    report = "\n\n".join(f"{o.result.upper()} {o.test}\n{o.message[-2500:]}" for o in bad)
    assert not bad and proc.returncode == 0, (
        f"{where}: {len(bad)} of {len(outcomes)} did not pass (a version-specific fact must be asserted "
        f"per release, not skipped):\n{report}\n--- pytest's summary ---\n{_summary(proc.stdout)}")
    modules = {part for o in outcomes for part in o.test.split("::")[0].split(".")}
    for name in CONTRACT_FILES:
        assert Path(name).stem in modules, f"{where}: no test of {name} ran ({len(outcomes)} ran)"
