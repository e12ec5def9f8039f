"""Time to the same final cost: solver.least_squares vs scipy and optimistix.

Each method solves each bundled problem in float64 twice; the first (cold)
time includes tracing and compiling, the second (warm) does not. scipy's
``least_squares`` (trf) gets the exact Jacobian from a jitted ``jax.jacfwd``;
optimistix's ``LevenbergMarquardt`` runs if optimistix is importable.

Example:
    python benchmarks/solver_vs.py --json results/vs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import solver  # noqa: E402
from solver.jacobian import lsq_residual  # noqa: E402

DEFAULT_PROBLEMS = ("rosenbrock:256", "bratu:16", "spectral:128", "curvefit:8")


def _timed(fn: Callable[[], tuple[float, int]]) -> dict[str, float]:
    out = {}
    for label in ("cold", "warm"):
        t = time.perf_counter()
        cost, nfev = fn()
        out[f"{label}_seconds"] = time.perf_counter() - t
    out.update(cost=cost, nfev=nfev)
    return out


def run_solver(name: str, size: int) -> dict[str, float]:
    def solve() -> tuple[float, int]:
        objective, x0 = solver.problems.get(name, size)
        result = solver.least_squares(objective, x0)
        return result.cost, result.nfev

    return _timed(solve)


def run_scipy(name: str, size: int) -> dict[str, float]:
    import scipy.optimize  # noqa: PLC0415

    objective, x0 = solver.problems.get(name, size)
    objective.build(x0)
    f = lambda y: lsq_residual(y, objective.data, spec=objective.spec)  # noqa: E731
    fun, jac = jax.jit(f), jax.jit(jax.jacfwd(f))

    def solve() -> tuple[float, int]:
        r = scipy.optimize.least_squares(
            lambda y: np.asarray(fun(y)), x0, jac=lambda y: np.asarray(jac(jnp.asarray(y))), method="trf"
        )
        return float(r.cost), int(r.nfev)

    return _timed(solve)


def run_optimistix(name: str, size: int) -> dict[str, float] | None:
    try:
        import optimistix as optx  # noqa: PLC0415
    except ImportError:
        return None
    objective, x0 = solver.problems.get(name, size)
    objective.build(x0)
    data, spec = objective.data, objective.spec

    @jax.jit
    def solve_jit(y0: jax.Array) -> tuple[jax.Array, jax.Array]:
        sol = optx.least_squares(
            lambda y, args: lsq_residual(y, data, spec=spec),
            optx.LevenbergMarquardt(rtol=1e-8, atol=1e-10), y0, max_steps=10_000, throw=False,
        )
        r = lsq_residual(sol.value, data, spec=spec)
        return 0.5 * jnp.sum(r * r), sol.stats["num_steps"]

    def solve() -> tuple[float, int]:
        cost, steps = solve_jit(jnp.asarray(x0))
        return float(cost), int(steps)

    return _timed(solve)


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(DEFAULT_PROBLEMS), metavar="NAME:SIZE")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    rows = []
    for item in args.problems:
        name, size = item.split(":")
        for method, runner in (("solver", run_solver), ("scipy", run_scipy), ("optimistix", run_optimistix)):
            res = runner(name, int(size))
            if res is not None:
                rows.append({"problem": item, "method": method, **res})
    print(f"{'problem':<16} {'method':<11} {'cost':>12} {'nfev':>6} {'cold s':>8} {'warm s':>8}")
    for r in rows:
        print(f"{r['problem']:<16} {r['method']:<11} {r['cost']:>12.4e} {r['nfev']:>6} "
              f"{r['cold_seconds']:>8.3f} {r['warm_seconds']:>8.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": jax.devices()[0].device_kind, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
