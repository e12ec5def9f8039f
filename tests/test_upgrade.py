"""A real JAX upgrade, end to end: a Python 3.11 environment with jax/jaxlib 0.10.2
(the newest release for Python 3.11) and a Python 3.12 one with the newest release
the project claims (0.12.0.1) share one cache root.

Each step runs the environment's own ``python -m jaxcache`` / ``python -m solver``
in a fresh process with a clean environment, and every claim is checked against
the files on disk:

1. old env: ``warm``, then a fresh solve hits every solver kernel;
2. new env: the same solve misses (the jaxlib version is hashed into every key);
   ``inspect`` shows both versions with the entry counts and bytes on disk;
3. new env: ``prune --stale --dry-run`` lists exactly the old version's entries
   and deletes nothing, ``prune --stale --yes`` deletes exactly those; ``hook``
   does the same by itself after the upgrade, and nothing the second time;
4. new env: ``warm --verify`` passes, and the solve hits everything, served whole
   by the executable store (proven with JAX's own entries of the solver removed);
   with the old environment still in use, its re-warmed entries (``warm --verify``
   passes there too) survive ``hook`` (an upgrade is noticed once) and
   ``prune --stale --keep-version 0.10.2``, and it still hits them.

The environments come from :func:`test_jax_versions.jax_python` (the test
environment's own where it has the release; else built once and reused).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_jax_versions import JAX_0_10, NEWEST_JAX, TIMEOUT, _clean_env, jax_python

from jaxcache import exeformat

OLD = JAX_0_10  # Python 3.11
NEW = NEWEST_JAX  # Python 3.12
PROBLEM = ("--problem", "bratu", "--size", "6")
SOLVER_KERNELS = {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"}

# Not part of what a prune may change: jaxcache's own index/statistics/hook
# state (ROOT/**/.jaxcache/) and the .lockfile a prune takes in a folder.
_INTERNAL_DIR = ".jaxcache"
_LOCKFILE = ".lockfile"


@pytest.fixture(scope="module")
def pythons() -> dict[str, Path]:
    return {OLD: jax_python(OLD), NEW: jax_python(NEW)}


class Env:
    """Runs one environment's jaxcache and solver in fresh processes."""

    def __init__(self, python: Path, version: str, *, cwd: Path, env: dict[str, str]) -> None:
        self.python, self.version, self.cwd, self.env = python, version, cwd, env

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.python), *args], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)

    def jaxcache(self, root: Path, *args: str) -> dict:
        """``python -m jaxcache --cache-dir ROOT ARGS... --json``: its JSON, exit code 0 required."""
        proc = self._run(["-m", "jaxcache", "--cache-dir", str(root), *args])
        where = f"jax {self.version}: jaxcache {' '.join(args)} (exit {proc.returncode})"
        assert proc.returncode == 0, f"{where}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"{where}: not JSON:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None

    def warm(self, root: Path, *, verify: bool = False) -> dict:
        report = self.jaxcache(root, "warm", *PROBLEM, *(["--verify"] if verify else []), "--json")
        assert report["ok"] and report["failed"] == 0, report
        assert report["jax_dir"] == str(root / f"jaxlib-{self.version}"), report["jax_dir"]
        assert SOLVER_KERNELS <= {k["module"] for k in report["kernels"]}, report["kernels"]
        if verify:
            (verified,) = report["verify"]
            assert verified["ok"] and verified["converged"] and verified["missed_kernels"] == [], verified
            assert set(verified["modules"]) >= SOLVER_KERNELS, verified
            assert all(verified["modules"][m]["hits"] >= 1 and verified["modules"][m]["misses"] == 0
                       for m in SOLVER_KERNELS), verified
        return report

    def python_version(self) -> str:
        proc = self._run(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def solve(self, root: Path) -> dict[str, dict]:
        """A solve under ``jaxcache run --json`` in a fresh process: hits and misses per solver kernel."""
        proc = self._run(["-m", "jaxcache", "--cache-dir", str(root), "run", "--json", "--",
                          str(self.python), "-m", "solver", *PROBLEM])
        where = f"jax {self.version}: jaxcache run -- python -m solver (exit {proc.returncode})"
        assert proc.returncode == 0, f"{where}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["exit_code"] == 0 and report["processes"] == 1, report
        kernels = {m: c for m, c in report["modules"].items() if m.startswith("jit_lsq_")}
        assert set(kernels) == SOLVER_KERNELS, (where, report["modules"])
        return kernels


def _all_hit(kernels: dict[str, dict]) -> bool:
    return all(c["hits"] >= 1 and c["misses"] == 0 for c in kernels.values())


def _all_miss(kernels: dict[str, dict]) -> bool:
    return all(c["hits"] == 0 and c["misses"] >= 1 for c in kernels.values())


def _entries(root: Path, version: str) -> dict[str, Path]:
    """Key (``<module>-<hash>``) -> file, for the entries a version's folder holds on disk."""
    return {p.name[: -len("-cache")]: p for p in (root / f"jaxlib-{version}").glob("*-cache")}


def _stored(root: Path, version: str) -> list[Path]:
    """The executable store's files in a version's folder (compiled kernels jaxcache keeps beside JAX's)."""
    return sorted((root / f"jaxlib-{version}" / "executables").glob("*.jaxexe"))


def _bytes(paths) -> tuple[int, int]:
    stats = [p.stat() for p in paths]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root (relative path -> size, sha256), jaxcache's internal files excluded."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if _INTERNAL_DIR in rel.parts or p.name == _LOCKFILE or p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        out[rel.as_posix()] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def _age_write_log(folder: Path, seconds: float = 3600.0) -> None:
    """Dates every write-log line ``seconds`` back: prune keeps lines young enough to
    belong to a write still in flight, and these were written moments ago."""
    log = folder / ".jaxcache-writes.tsv"
    then = f"{time.time() - seconds:.3f}"
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    log.write_text("".join("\t".join([r[0], r[1], then, *r[3:]]) + "\n" for r in rows))


def _rel(root: Path, paths) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths}


def _without(snapshot: dict[str, tuple[int, str]], removed: set[str]) -> dict[str, tuple[int, str]]:
    assert removed <= set(snapshot)
    return {k: v for k, v in snapshot.items() if k not in removed}


@pytest.mark.slow
def test_upgrade_from_jax_0_10_to_0_12_with_one_shared_cache(pythons: dict[str, Path], tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"  # no pyproject.toml: flags and defaults only
    cwd.mkdir()
    env = _clean_env(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(tmp_path / "config"),
                     XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    old = Env(pythons[OLD], OLD, cwd=cwd, env=env)
    new = Env(pythons[NEW], NEW, cwd=cwd, env=env)
    # The registry's newest for each: 0.10.2 on 3.11 (or the test environment's newer Python), 0.12 on 3.12+.
    versions = (old.python_version(), new.python_version())
    old_py, new_py = (tuple(int(n) for n in v.split(".")) for v in versions)
    assert old_py >= (3, 11) and new_py >= (3, 12), versions
    root = tmp_path / "cache"

    # 1. The old environment warms, and a fresh solve compiles nothing.
    assert old.warm(root)["compiled"] >= len(SOLVER_KERNELS)
    old_entries = _entries(root, OLD)
    assert {k.rsplit("-", 1)[0] for k in old_entries} >= SOLVER_KERNELS, sorted(old_entries)
    solved = old.solve(root)
    assert _all_hit(solved), solved
    assert _entries(root, OLD) == old_entries  # a solve that hits writes nothing

    # 2. The same solve after the upgrade misses every kernel: the keys carry the jaxlib version.
    old_files = _snapshot(root / f"jaxlib-{OLD}")
    solved = new.solve(root)
    assert _all_miss(solved), solved
    new_entries = _entries(root, NEW)
    assert {k.rsplit("-", 1)[0] for k in new_entries} >= SOLVER_KERNELS, sorted(new_entries)
    assert not set(new_entries) & set(old_entries)
    assert _snapshot(root / f"jaxlib-{OLD}") == old_files  # the new version leaves the old entries alone

    inspected = new.jaxcache(root, "inspect", "--json")
    assert inspected["installed_version"] == NEW
    assert set(inspected["by_version"]) == {OLD, NEW}, inspected["by_version"]
    for version, entries in ((OLD, old_entries), (NEW, new_entries)):
        size, allocated = _bytes(entries.values())
        assert inspected["by_version"][version] == {"entries": len(entries), "bytes": size,
                                                    "allocated_bytes": allocated}, (version, inspected["by_version"])
    old_size, _ = _bytes(old_entries.values())
    new_size, _ = _bytes(new_entries.values())
    assert inspected["entries"] == len(old_entries) + len(new_entries)
    assert inspected["bytes"] == old_size + new_size
    assert (inspected["other_version_entries"], inspected["other_version_bytes"]) == (len(old_entries), old_size)
    # Each version's warm (old) or first solve (new) also stored the solver's kernels whole.
    old_stored, new_stored = _stored(root, OLD), _stored(root, NEW)
    assert len(old_stored) >= len(SOLVER_KERNELS) and len(new_stored) >= len(SOLVER_KERNELS)
    assert inspected["executables"] == len(old_stored) + len(new_stored), inspected
    old_size += _bytes(old_stored)[0]  # prune frees and keeps both kinds
    new_size += _bytes(new_stored)[0]

    # 3. prune --stale: the plan names exactly the old version's entries; deleting removes exactly those.
    _age_write_log(root / f"jaxlib-{OLD}")
    before = _snapshot(root)
    assert not any(name.endswith("-atime") for name in before)  # uncapped: an entry is its -cache alone
    plan = new.jaxcache(root, "prune", "--stale", "--dry-run", "--json")
    assert plan["dry_run"] is True
    assert sorted(plan["deleted"]) == sorted(old_entries), plan
    assert (plan["freed_bytes"], plan["kept_entries"], plan["kept_bytes"]) == (old_size, len(new_entries), new_size)
    assert _snapshot(root) == before

    pruned = new.jaxcache(root, "prune", "--stale", "--yes", "--json")
    assert pruned["dry_run"] is False and pruned["skipped"] == [], pruned
    assert sorted(pruned["deleted"]) == sorted(old_entries), pruned
    assert (pruned["freed_bytes"], pruned["kept_entries"], pruned["kept_bytes"]) == (old_size, len(new_entries),
                                                                                      new_size)
    assert sorted(pruned["executables_deleted"]) == sorted(p.name[:-7] for p in old_stored), pruned
    old_log = f"jaxlib-{OLD}/.jaxcache-writes.tsv"
    assert before[old_log][0] > 0
    # What is left: everything but the old entries and their write-log lines (the log is compacted).
    after = _snapshot(root)
    assert after.pop(old_log)[0] == 0
    assert after == _without(before, _rel(root, [*old_entries.values(), *old_stored]) | {old_log})
    inspected = new.jaxcache(root, "inspect", "--json")
    assert set(inspected["by_version"]) == {NEW} and inspected["other_version_entries"] == 0, inspected

    # 3b. hook does the same by itself. A second root, because a hook records the
    # highest jaxlib it has seen and prunes only on an upgrade past it.
    hooked = tmp_path / "hooked"
    old.warm(hooked)
    hooked_old = _entries(hooked, OLD)
    assert sorted(k.rsplit("-", 1)[0] for k in hooked_old) == sorted(k.rsplit("-", 1)[0] for k in old_entries)
    hooked_stored = _stored(hooked, OLD)
    hooked_size = _bytes(hooked_old.values())[0] + _bytes(hooked_stored)[0]
    # The same situation, for `hook --keep-version` (only the version folders matter to it).
    kept = tmp_path / "kept"
    shutil.copytree(hooked, kept, symlinks=True)

    _age_write_log(hooked / f"jaxlib-{OLD}")
    before = _snapshot(hooked)
    result = new.jaxcache(hooked, "hook", "--yes", "--json")  # a job script's hook prunes with --yes
    assert (result["jaxlib"], result["upgraded_from"]) == (NEW, OLD), result
    assert (result["pruned_entries"], result["pruned_executables"], result["freed_bytes"]) == (
        len(hooked_old), len(hooked_stored), hooked_size), result
    assert result["env"]["JAX_COMPILATION_CACHE_DIR"] == str(hooked / f"jaxlib-{NEW}"), result["env"]
    after = _snapshot(hooked)
    # Exactly the old entries (and their write-log lines) went; the only new file is the
    # new version's folder marker.
    assert set(after) - set(before) == {f"jaxlib-{NEW}/.jaxcache-version.json"}, sorted(set(after) - set(before))
    assert after.pop(old_log)[0] == 0
    assert _without(before, _rel(hooked, [*hooked_old.values(), *hooked_stored]) | {old_log}) == {
        k: v for k, v in after.items() if k in before}
    after = _snapshot(hooked)
    assert json.loads((hooked / ".jaxcache" / "hook.json").read_text())["highest_jaxlib"] == NEW

    before = after
    again = new.jaxcache(hooked, "hook", "--json")
    assert (again["upgraded_from"], again["pruned_entries"], again["freed_bytes"]) == (None, 0, 0), again
    assert _snapshot(hooked) == before

    before = _snapshot(kept)
    result = new.jaxcache(kept, "hook", "--keep-version", OLD, "--json")
    assert (result["upgraded_from"], result["pruned_entries"]) == (OLD, 0), result
    assert _without(_snapshot(kept), {f"jaxlib-{NEW}/.jaxcache-version.json"}) == before

    # 4. After the upgrade: warm (and verify in fresh processes), and the first solve compiles nothing.
    assert new.warm(hooked, verify=True)["compiled"] >= len(SOLVER_KERNELS)
    solved = new.solve(hooked)
    assert _all_hit(solved), solved
    _assert_the_store_serves_the_solver(new, hooked, tmp_path / "store-only")

    # Someone still runs the old environment on the same cache: its entries come back...
    assert old.warm(hooked, verify=True)["compiled"] >= len(SOLVER_KERNELS)
    assert set(_entries(hooked, OLD)) == set(hooked_old)
    before = _snapshot(hooked)
    # ...and survive the hooks of both environments (the upgrade was handled once; a downgrade never prunes)...
    for env_, name in ((new, NEW), (old, OLD)):
        result = env_.jaxcache(hooked, "hook", "--json")
        assert (result["jaxlib"], result["upgraded_from"], result["pruned_entries"]) == (name, None, 0), result
        assert _snapshot(hooked) == before
    # ...and `prune --stale --keep-version`, while plain `--stale` would take them.
    plan = new.jaxcache(hooked, "prune", "--stale", "--dry-run", "--json")
    assert sorted(plan["deleted"]) == sorted(hooked_old), plan
    kept_plan = new.jaxcache(hooked, "prune", "--stale", "--keep-version", OLD, "--yes", "--json")
    assert kept_plan["deleted"] == [] and kept_plan["freed_bytes"] == 0, kept_plan
    assert kept_plan["kept_entries"] == len(hooked_old) + len(_entries(hooked, NEW)), kept_plan
    assert _snapshot(hooked) == before
    solved = old.solve(hooked)
    assert _all_hit(solved), solved
    for cache in (root, hooked):
        checked = new.jaxcache(cache, "check", "--json")
        assert checked["ok"] is True, checked


def _assert_the_store_serves_the_solver(env: Env, root: Path, scratch: Path) -> None:
    """The executable store of ``env``'s version holds every solver kernel, written by that
    jaxlib, and serves a solve whole: in a copy of the cache with JAX's own entries of the
    solver's kernels removed, a solve still hits every kernel, misses none and writes nothing."""
    stored = _stored(root, env.version)
    headers = [exeformat.read_header(p) for p in stored]
    assert SOLVER_KERNELS <= {h["module"] for h in headers}, headers
    assert {(h["jax"], h["jaxlib"]) for h in headers} == {(env.version, env.version)}, headers

    shutil.copytree(root, scratch, symlinks=True)
    removed = [p for key, p in _entries(scratch, env.version).items() if key.rsplit("-", 1)[0] in SOLVER_KERNELS]
    assert {p.name.rsplit("-", 2)[0] for p in removed} == SOLVER_KERNELS, removed
    for p in removed:
        p.unlink()
    before = _snapshot(scratch)
    solved = env.solve(scratch)
    assert _all_hit(solved) and all(c["writes"] == 0 for c in solved.values()), solved
    assert _snapshot(scratch) == before  # no entry compiled and written, no executable stored
