"""Time to the same final cost: solver.least_squares vs scipy and optimistix.

All methods solve each bundled problem in float64 in the same process. Each
gets one untimed-for-the-ratio cold call (tracing and compiling; reported),
then rounds of timed warm solves, interleaved round-robin across methods so
that load on the machine hits all of them alike: at least ``--repeats``
rounds, and more until every method has spent ``--min-seconds`` (so a row
whose solve takes milliseconds gets hundreds of rounds, not a handful that
one busy moment decides). The table shows each method's median and the
median over rounds of the paired ratio solver/method (below 1: the solver
is faster); pairing solves from the same round cancels slow drifts in the
machine's load. The objective is built once per problem, as a user
solving repeatedly would.

* ``solver``: `solver.least_squares` with default options ("auto" chunks).
* ``scipy``: ``scipy.optimize.least_squares(method="trf")`` given the exact
  Jacobian from a jitted ``jax.jacfwd``.
* ``optimistix``: ``optx.least_squares`` with ``LevenbergMarquardt``, the
  whole solve jitted, data passed as arguments (skipped if not importable).

"Same final cost": each method's final cost is checked against the solver's
(``|c - c_ref| <= 1e-6 * c_ref + 1e-12``); a mismatch is flagged in the table.

Example:
    python benchmarks/solver_vs.py --repeats 7 --min-seconds 3 --json benchmarks/results/solver_vs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
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

DEFAULT_PROBLEMS = (
    "rosenbrock:256", "rosenbrock:1024",
    "bratu:16", "bratu:32",
    "spectral:128", "spectral:512",
    "curvefit:8", "curvefit:64",
)
Solve = Callable[[], tuple[float, int]]


def make_solver(name: str, size: int) -> Solve:
    objective, x0 = solver.problems.get(name, size)
    objective.build(x0)

    def solve() -> tuple[float, int]:
        result = solver.least_squares(objective, x0)
        return result.cost, result.nfev

    return solve


def make_scipy(name: str, size: int) -> Solve:
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

    return solve


def make_optimistix(name: str, size: int) -> Solve | None:
    try:
        import optimistix as optx  # noqa: PLC0415
    except ImportError:
        return None
    objective, x0 = solver.problems.get(name, size)
    objective.build(x0)
    spec = objective.spec

    def residual(y: jax.Array, data: tuple) -> jax.Array:
        return lsq_residual(y, data, spec=spec)

    @jax.jit
    def solve_jit(y0: jax.Array, data: tuple) -> tuple[jax.Array, jax.Array]:
        sol = optx.least_squares(
            residual, optx.LevenbergMarquardt(rtol=1e-8, atol=1e-10), y0, args=data,
            max_steps=10_000, throw=False,
        )
        r = residual(sol.value, data)
        return 0.5 * jnp.sum(r * r), sol.stats["num_steps"]

    y0 = jnp.asarray(x0)

    def solve() -> tuple[float, int]:
        cost, steps = solve_jit(y0, objective.data)
        return float(cost), int(steps)

    return solve


MAKERS = {"solver": make_solver, "scipy": make_scipy, "optimistix": make_optimistix}


def _time(fn: Solve) -> tuple[float, float, int]:
    t = time.perf_counter()
    cost, nfev = fn()
    return time.perf_counter() - t, cost, nfev


def bench(name: str, size: int, repeats: int, min_seconds: float = 0.0, max_rounds: int = 2000) -> list[dict[str, object]]:
    """Cold call, then interleaved rounds of warm solves of every method (see the module doc)."""
    solves = {m: make(name, size) for m, make in MAKERS.items()}
    solves = {m: s for m, s in solves.items() if s is not None}
    rows = {m: {"problem": f"{name}:{size}", "method": m, "warm": []} for m in solves}
    for m, fn in solves.items():
        rows[m]["cold_seconds"], rows[m]["cost"], rows[m]["nfev"] = _time(fn)
    methods = list(solves)
    r = 0
    while r < max_rounds and (r < repeats or min(sum(row["warm"]) for row in rows.values()) < min_seconds):
        for m in methods[r % len(methods):] + methods[: r % len(methods)]:
            rows[m]["warm"].append(_time(solves[m])[0])
        r += 1
    ref = rows["solver"]
    for row in rows.values():
        row["rounds"] = r
        row["warm_seconds"] = statistics.median(row["warm"])
        row["same_cost"] = abs(row["cost"] - ref["cost"]) <= 1e-6 * ref["cost"] + 1e-12
        paired = [ours / theirs for ours, theirs in zip(ref["warm"], row["warm"])]
        row["solver_ratio"] = statistics.median(paired)
        row["solver_ratio_quartiles"] = [float(q) for q in np.percentile(paired, [25, 75])]
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison, prints a table; returns 0 when the solver is no slower than any baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(DEFAULT_PROBLEMS), metavar="NAME:SIZE")
    parser.add_argument("--repeats", type=int, default=5, help="at least this many rounds")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="more rounds until every method has spent this long (default 2)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    rows = []
    for item in args.problems:
        name, size = item.split(":")
        rows += bench(name, int(size), args.repeats, args.min_seconds)
        for r in rows[-len(MAKERS):]:
            print(f"  {r['problem']} {r['method']}: {r['warm_seconds']:.4f} s", file=sys.stderr)
    print(f"{jax.devices()[0].device_kind}, float64, medians over interleaved rounds of warm solves "
          f"(at least {args.repeats} rounds and {args.min_seconds:g} s per method)")
    print(f"{'problem':<16} {'method':<11} {'cost':>11} {'same':>5} {'nfev':>5} {'cold s':>8} "
          f"{'warm s':>8} {'rounds':>6} {'solver/this':>11} {'(quartiles)':>12}")
    for r in rows:
        q25, q75 = r["solver_ratio_quartiles"]
        print(f"{r['problem']:<16} {r['method']:<11} {r['cost']:>11.3e} {'yes' if r['same_cost'] else 'NO':>5} "
              f"{r['nfev']:>5} {r['cold_seconds']:>8.3f} {r['warm_seconds']:>8.4f} {r['rounds']:>6} "
              f"{r['solver_ratio']:>11.2f} {q25:>5.2f}-{q75:<5.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"device": jax.devices()[0].device_kind, "repeats": args.repeats,
             "min_seconds": args.min_seconds, "rows": rows}, indent=2))
    slower = [r for r in rows if r["method"] != "solver" and r["solver_ratio"] > 1.0]
    return 1 if slower else 0


if __name__ == "__main__":
    sys.exit(main())
