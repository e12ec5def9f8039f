"""The executable store: after ``jaxcache warm`` a fresh solve loads every solver kernel whole
(no tracing, no lowering, no JAX cache lookup), gets the same answer, and survives damage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jaxcache_testing import env_with, version_folder

from jaxcache import executables, exeformat
from jaxcache.prune import execute, plan_prune
from jaxcache.scanning import scan

SOLVER_KERNELS = {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"}

# A fresh process configured like `jaxcache run`: the JSON line says what the store
# did, what JAX's cache was asked, and the answer.
SOLVE = r"""
import json, logging, os, sys
import jaxcache
from jaxcache import executables, exeformat
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jaxcache.configure(sys.argv[1])
else:  # plain JAX settings, as a read-only user has them, and the store plugged in by hand
    executables.plug_into_solver()
from jaxcache.compilelog import CompileLog
log = CompileLog().start()
jax_requests = []
class Requests(logging.Filter):  # the user's own look at JAX's DEBUG records
    def filter(self, record):
        if isinstance(record.msg, str) and "persistent compilation cache" in record.msg.lower():
            jax_requests.append(str(record.args[0]))
        return True
logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
logging.getLogger("jax._src.compiler").addFilter(Requests())
import solver
objective, x0 = solver.problems.get(sys.argv[2], int(sys.argv[3]))
result = solver.least_squares(objective, x0)
print(json.dumps({"store": executables.stats(), "jax_requests": sorted(set(jax_requests)),
                  "hits": {m: c.hits for m, c in log.modules.items()},
                  "x": result.x.tolist(), "cost": result.cost, "nfev": result.nfev, "success": bool(result.success)}))
"""


def _solve(cache: Path, problem: str = "bratu", size: int = 6, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SOLVE, str(cache), problem, str(size)],
                          capture_output=True, text=True, env=env_with(**env), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def _warm(cache: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "warm", "--json",
                           "--problem", "bratu", "--size", "6", *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def warmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("warmed") / "cache"
    _warm(cache)
    return cache


def test_a_warmed_solve_loads_every_kernel_whole_and_asks_jax_for_none(warmed: Path) -> None:
    solved = _solve(warmed)
    assert solved["success"]
    loaded = {m for m, c in solved["store"].items() if c.get("loaded")}
    assert loaded == SOLVER_KERNELS, solved["store"]
    assert not any(c.get("stored") for c in solved["store"].values()), solved["store"]
    # Not traced, not lowered: JAX's persistent cache was never even consulted for them.
    assert not SOLVER_KERNELS & set(solved["jax_requests"]), solved["jax_requests"]
    # ...and jaxcache's compile log (what `run`, `stats` and `verify` count) calls each load a hit.
    assert all(solved["hits"].get(m, 0) >= 1 for m in SOLVER_KERNELS), solved["hits"]


def test_the_stored_kernels_give_the_same_answer_as_compiling(warmed: Path) -> None:
    stored = _solve(warmed)
    compiled = _solve(warmed, JAXCACHE_EXECUTABLES="0")
    assert not compiled["store"], compiled["store"]  # switched off: nothing loaded or stored
    assert SOLVER_KERNELS <= set(compiled["jax_requests"])
    assert (stored["nfev"], stored["cost"], stored["x"]) == (compiled["nfev"], compiled["cost"], compiled["x"])


def test_a_second_warm_finds_everything_stored(warmed: Path) -> None:
    report = _warm(warmed)
    assert report["compiled"] == 0 and report["failed"] == 0 and report["cached"] >= len(SOLVER_KERNELS), report


def test_a_cold_run_stores_what_it_compiles_and_the_next_run_loads_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _solve(cache)
    assert {m for m, c in first["store"].items() if c.get("stored")} >= SOLVER_KERNELS, first["store"]
    second = _solve(cache)
    assert {m for m, c in second["store"].items() if c.get("loaded")} == SOLVER_KERNELS, second["store"]
    assert second["x"] == first["x"]


def test_a_run_never_stores_an_executable_jax_loaded_from_its_own_cache(tmp_path: Path) -> None:
    """Re-serializing such an executable gives one that fails at run time ("Function ... not
    found"), so a run that hits JAX's cache leaves the store alone; `warm` compiles afresh."""
    cache = tmp_path / "cache"
    _solve(cache, JAXCACHE_EXECUTABLES="0")  # JAX's cache only
    hit = _solve(cache)
    assert not any(c.get("stored") for c in hit["store"].values()), hit["store"]
    assert SOLVER_KERNELS <= set(hit["jax_requests"])
    _warm(cache)
    assert {m for m, c in _solve(cache)["store"].items() if c.get("loaded")} == SOLVER_KERNELS


@pytest.mark.parametrize("damage", ["truncate", "garbage-payload", "garbage-file"])
def test_a_damaged_stored_executable_is_ignored_found_and_repaired(tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    _warm(cache)
    files = sorted((version_folder(cache) / exeformat.FOLDER_NAME).glob("*" + exeformat.SUFFIX))
    victim = max(files, key=lambda p: p.stat().st_size)
    data = victim.read_bytes()
    victim.write_bytes({"truncate": data[: len(data) // 2],
                        "garbage-payload": data[:-200] + b"\0" * 200,
                        "garbage-file": b"not an executable at all"}[damage])

    solved = _solve(cache)  # falls back to compiling that one kernel; still right
    assert solved["success"] and "unusable" in solved["stderr"], solved["stderr"][-2000:]

    from jaxcache.integrity import check, repair

    report = check(scan(cache))
    if damage == "garbage-file":
        # No header: not provably ours, so it is only counted as another file, never deleted.
        assert not any(f.path == victim for f in report.findings)
        assert scan(cache).other_files >= 1
        return
    found = [f for f in report.findings if f.path == victim]
    assert [f.kind for f in found] == ["damaged-executable"], report.findings
    assert not repair(report).failed and not victim.exists()
    assert _warm(cache)["compiled"] >= 1  # warm puts it back
    assert {m for m, c in _solve(cache)["store"].items() if c.get("loaded")} == SOLVER_KERNELS


def test_prune_and_clear_take_stored_executables_with_the_entries(warmed: Path, tmp_path: Path) -> None:
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(warmed, cache)
    info = scan(cache)
    assert len(info.executables) >= len(SOLVER_KERNELS)
    by_name = plan_prune(info, name="jit_lsq_iter*")
    assert {e.module for e in by_name.executables} == {"jit_lsq_iterate"}
    # --max-size drops stored executables before any JAX entry (a trace to redo, not a compile).
    entry_bytes = sum(e.bytes for e in info.entries)
    squeezed = plan_prune(info, max_size=entry_bytes)
    assert not squeezed.deletions and len(squeezed.executables) == len(info.executables)
    cleared = execute(plan_prune(info, everything=True))
    assert len(cleared.executables_deleted) == len(info.executables) and not cleared.executables_skipped
    assert not list((version_folder(cache) / exeformat.FOLDER_NAME).iterdir())


def test_the_store_key_follows_what_decides_the_program() -> None:
    """Everything JAX's own tracing cache keys on, plus the arguments and the kernel's identity."""
    import jax
    import numpy as np

    spec = (jax.ShapeDtypeStruct((4,), np.float32),)
    env = executables.environment()
    assert env is not None
    base = executables.store_key("k", spec, env)
    assert base == executables.store_key("k", spec, executables.environment())  # stable
    assert base != executables.store_key("other", spec, env)
    assert base != executables.store_key("k", (jax.ShapeDtypeStruct((5,), np.float32),), env)
    assert base != executables.store_key("k", (jax.ShapeDtypeStruct((4,), np.float32, weak_type=True),), env)
    with jax.default_matmul_precision("highest"):
        changed = executables.environment()
    assert changed is not None and changed != env


def test_a_users_own_objective_is_never_stored(tmp_path: Path) -> None:
    """Code outside the solver package could change without any name showing it: kernels
    that call it take the ordinary path (JAX's cache) and are not stored."""
    code = r"""
import sys, json
import jaxcache
jaxcache.configure(sys.argv[1])
import jax.numpy as jnp, numpy as np
from jaxcache import executables, exeformat
import solver

def mine(x, params):
    return x - params["target"]

objective = solver.ObjectiveFunction(solver.Objective(mine, 3, params={"target": np.ones(3)}), jac_chunk_size=None)
result = solver.least_squares(objective, np.zeros(3))
print(json.dumps({"store": executables.stats(), "success": bool(result.success)}))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], capture_output=True, text=True,
                          env=env_with(), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Every solver kernel runs the user's residual: none is stored.
    assert out["success"] and not any(c.get("stored") or c.get("loaded") for c in out["store"].values()), out


def test_a_read_only_warmed_cache_still_serves_every_kernel(tmp_path: Path) -> None:
    """A cache mounted read-only on compute nodes (warmed elsewhere): loads need no writes."""
    from jaxcache_testing import make_read_only

    cache = tmp_path / "cache"
    _warm(cache)
    with make_read_only(cache):  # jaxcache.configure refuses such a folder; plain JAX settings use it
        solved = _solve(cache, JAX_COMPILATION_CACHE_DIR=str(version_folder(cache)),
                        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES="none")
    assert solved["success"]
    assert {m for m, c in solved["store"].items() if c.get("loaded")} == SOLVER_KERNELS, solved["store"]


def test_a_read_only_cold_cache_runs_and_says_once_that_it_cannot_store(tmp_path: Path) -> None:
    from jaxcache_testing import make_read_only

    cache = tmp_path / "cache"
    _solve(cache, "rosenbrock", 4, JAXCACHE_EXECUTABLES="0")  # the folders exist, the store does not
    with make_read_only(cache):
        solved = _solve(cache, JAX_COMPILATION_CACHE_DIR=str(version_folder(cache)),
                        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES="none")
    assert solved["success"] and not any(c.get("stored") for c in solved["store"].values())
    assert solved["stderr"].count("cannot store compiled kernels") == 1, solved["stderr"][-2000:]


def test_loading_lapack_lightly_leaves_scipy_working(warmed: Path) -> None:
    """A warmed solve loads only scipy's two LAPACK table modules (not scipy.linalg):
    the user's own scipy.linalg must still import and work afterwards."""
    code = SOLVE.replace("print(json.dumps(", "assert 'scipy.linalg' not in sys.modules and 'scipy.linalg.cython_lapack' "
                         "in sys.modules\nimport scipy.linalg\nfrom scipy.linalg import cython_lapack\n"
                         "import numpy\nassert numpy.allclose(scipy.linalg.svd(numpy.diag([3.0, 2.0]))[1], [3, 2])\n"
                         "assert cython_lapack is sys.modules['scipy.linalg.cython_lapack']\nprint(json.dumps(", 1)
    proc = subprocess.run([sys.executable, "-c", code, str(warmed), "bratu", "6"], capture_output=True, text=True,
                          env=env_with(), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["success"]


def test_a_symlinked_store_folder_is_never_followed(warmed: Path, tmp_path: Path) -> None:
    """Store files reached through a symlink may live anywhere: never listed, never deleted."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(warmed, cache)
    store = version_folder(cache) / exeformat.FOLDER_NAME
    outside = tmp_path / "elsewhere"
    shutil.move(store, outside)
    store.symlink_to(outside, target_is_directory=True)
    info = scan(cache)
    assert info.executables == () and info.other_files >= 1
    execute(plan_prune(info, everything=True))
    assert len(list(outside.iterdir())) >= len(SOLVER_KERNELS)


def test_arguments_with_a_custom_pytree_node_are_never_keyed() -> None:
    """Its auxiliary data need not show in the printed structure: two different ones could collide."""
    import jax
    import numpy as np

    @jax.tree_util.register_pytree_node_class
    class Params:
        def __init__(self, value: object, mode: str) -> None:
            self.value, self.mode = value, mode

        def tree_flatten(self):
            return (self.value,), self.mode

        @classmethod
        def tree_unflatten(cls, mode, children):
            return cls(children[0], mode)

    env = executables.environment()
    spec = jax.ShapeDtypeStruct((3,), np.float32)
    assert executables.store_key("k", (spec, Params(spec, "a")), env) is None
    assert executables.store_key("k", (spec, {"a": spec}), env) is not None


LEVELS = r"""
import json, sys
import jax, jax.numpy as jnp
import jaxcache
jaxcache.configure(sys.argv[1])
from jaxcache import executables
name, value = sys.argv[2], json.loads(sys.argv[3])
jitted = jax.jit(lambda x: jnp.sin(x) @ x)
specs = (jax.ShapeDtypeStruct((8, 8), jnp.float32),)
where = dict(identity="test:kernel", module="jit_kernel", folder=executables.active_folder())
default = getattr(jax.config, name)
_, first = executables.load_or_compile(jitted, specs, {}, **where)
jax.config.update(name, value)
other_loads = executables.load(specs, **where) is not None
_, other = executables.load_or_compile(jitted, specs, {}, **where)
jax.config.update(name, default)
default_loads = executables.load(specs, **where) is not None
print(json.dumps({"first": first, "other_loads": other_loads, "other": other, "default_loads": default_loads}))
"""

_LEVEL_VALUES = {"jax_optimization_level": "O1", "jax_memory_fitting_level": "O1",
                 "jax_exec_time_optimization_effort": 0.5, "jax_memory_fitting_effort": 0.5}


@pytest.mark.parametrize("name", sorted(_LEVEL_VALUES))
def test_another_optimization_level_never_loads_an_executable_compiled_for_this_one(tmp_path: Path, name: str) -> None:
    """Whichever of these options the installed JAX has is in the key (the "effort" ones are gone in 0.11.1)."""
    import jax

    if not hasattr(jax.config, name):
        from jaxcache import jaxinternals

        assert name not in {n for n, _ in jaxinternals.compile_config()}
        return
    proc = subprocess.run([sys.executable, "-c", LEVELS, str(tmp_path / "cache"), name, json.dumps(_LEVEL_VALUES[name])],
                          capture_output=True, text=True, env=env_with(), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["first"], out["other_loads"], out["default_loads"]) == ("stored", False, True), out
    assert out["other"] != "loaded", out


RUN_SOLVE = r"""
import json, sys
renamed = []  # JAX entries renamed into place: jaxcache's atomic writes, in a child that never configures
sys.addaudithook(lambda event, args: renamed.append(1) if event == "os.rename" and str(args[1]).endswith("-cache")
                 else None)
import solver
objective, x0 = solver.problems.get("bratu", 6)
result = solver.least_squares(objective, x0)
from jaxcache import executables  # what the store did (the bootstrap plugged this module's store in)
print(json.dumps({"store": executables.stats(), "renamed": len(renamed), "success": bool(result.success)}))
"""


def test_under_jaxcache_run_a_solve_stores_its_kernels_then_loads_them(tmp_path: Path) -> None:
    """The `jaxcache run` bootstrap plugs the store into the solver and makes JAX's writes atomic,
    though the program never imports jaxcache before its solve."""
    cache = tmp_path / "cache"
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "run", "--",
                               sys.executable, "-c", RUN_SOLVE], capture_output=True, text=True, env=env_with(),
                              timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(next(l for l in reversed(proc.stdout.splitlines()) if l.startswith('{"store"'))))
    first, second = runs
    assert first["success"] and second["success"]
    assert {m for m, c in first["store"].items() if c.get("stored")} == SOLVER_KERNELS, first["store"]
    assert first["renamed"] > 0
    assert {m for m, c in second["store"].items() if c.get("loaded")} == SOLVER_KERNELS, second["store"]
