"""The solver stands alone: public JAX only, no jaxcache, no import cycle; a kernel store plugs in from outside."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import solver
from solver.store import kernel_store, set_kernel_store

SOLVER = Path(solver.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it except ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
               and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING"
               for node in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOLVER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_solver_uses_public_jax_only_and_never_jaxcache() -> None:
    for path in sorted(SOLVER.rglob("*.py")):
        bad = sorted(m for m in _imports(path) if m.startswith(("jaxcache", "jax._src", "jaxlib")))
        assert not bad, f"{path.relative_to(SOLVER.parent)} imports {bad}"
        assert "jax._src" not in path.read_text(), path


def test_the_solver_modules_import_without_a_cycle() -> None:
    modules = {_module_name(p): p for p in SOLVER.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # A package imports its submodules to re-export them; a submodule importing its package back is the cycle.
    for name in graph:
        graph[name] -= {p for p in graph[name] if name.startswith(p + ".")}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, "import cycle: " + " -> ".join([*stack[stack.index(name):], name])
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


SOLVE_ALONE = r"""
import json, sys
import solver
objective, x0 = solver.problems.get("bratu", 6)
result = solver.least_squares(objective, x0)
for name in ("solver.memory", "solver.kernels", "solver.objective"):
    __import__(name)
print(json.dumps({"success": bool(result.success), "cost": float(result.cost),
                  "jaxcache": sorted(m for m in sys.modules if m == "jaxcache" or m.startswith(("jaxcache.", "_jaxcache"))),
                  "store": solver.store.kernel_store() is not None}))
"""


def test_import_solver_and_a_solve_never_import_jaxcache(tmp_path: Path) -> None:
    """In a fresh process, even one whose JAX has a persistent cache (plain JAX settings)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXCACHE_", "PYTHONPATH"))}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", SOLVE_ALONE], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"success": True, "cost": out["cost"], "jaxcache": [], "store": False}, out


class _Recording:
    """A kernel store that stores nothing and records what the solver asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def active(self) -> bool:
        return True

    def context(self) -> object:
        return "ctx"

    def is_stored(self, specs, *, identity, verify=False):
        self.calls.append("is_stored")
        return False

    def stored_here(self, specs, *, identity):
        return False

    def load(self, specs, *, identity, module, prepare=True):
        self.calls.append(f"load {module}")
        return None

    def load_or_compile(self, jitted, specs, static, *, identity, module, fresh=False):
        self.calls.append(f"load_or_compile {module}")
        return jitted.lower(*specs, **static).compile(), "compiled"

    def memory_analysis(self, jitted, specs, static, *, identity, module):
        self.calls.append(f"memory_analysis {module}")
        return None

    def prepare_runtime(self) -> None:
        self.calls.append("prepare_runtime")


def test_a_plugged_store_serves_every_solver_kernel_through_the_protocol() -> None:
    store = _Recording()
    previous = set_kernel_store(store)
    try:
        objective, x0 = solver.problems.get("rosenbrock", 4)
        result = solver.least_squares(objective, x0)
    finally:
        set_kernel_store(previous)
    assert kernel_store() is previous
    assert result.success
    asked = {c.split(" ", 1)[1] for c in store.calls if c.startswith("load_or_compile")}
    assert asked == {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"}, store.calls
    assert "prepare_runtime" in store.calls  # before running what a store loaded
