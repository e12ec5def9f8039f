"""``python -m solver``: solve a bundled problem and report the result.

Example:
    python -m solver --problem bratu --size 32 --jac-chunk-size auto --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

EXIT_USAGE = 2
EXIT_FAILURE = 1
_PROBLEMS = ("rosenbrock", "bratu", "spectral", "curvefit", "kinetics")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive int")
    return value


def _chunk_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive int or 'auto'") from None


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = _Parser(prog="python -m solver", description="Solve a bundled least-squares problem.")
    parser.add_argument("--problem", required=True, choices=_PROBLEMS)
    parser.add_argument("--size", type=_positive_int, default=16, help="problem size knob (default 16)")
    parser.add_argument("--jac-chunk-size", type=_chunk_size, default="auto", metavar="N|auto")
    parser.add_argument("--deriv-mode", choices=("batched", "blocked"), default="batched")
    parser.add_argument("--memory-budget", type=_positive_int, default=None, metavar="BYTES")
    parser.add_argument("--x-scale-jac", action="store_true", help="scale variables by Jacobian column norms")
    parser.add_argument("--max-nfev", type=_positive_int, default=None)
    parser.add_argument("--x64", action="store_true", help="solve in float64")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit code (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import jax  # noqa: PLC0415 (after parsing, so --help and errors are fast)

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from solver import SolverError, least_squares, problems  # noqa: PLC0415

    try:
        objective, x0 = problems.get(
            args.problem,
            args.size,
            deriv_mode=args.deriv_mode,
            jac_chunk_size=args.jac_chunk_size,
            memory_budget=args.memory_budget,
        )
        result = least_squares(
            objective, x0, max_nfev=args.max_nfev, x_scale="jac" if args.x_scale_jac else 1.0
        )
    except SolverError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    report = {
        "problem": args.problem,
        "size": args.size,
        "dim_x": objective.dim_x,
        "dim_f": objective.dim_f,
        "deriv_mode": objective.deriv_mode,
        "dtype": str(objective.dtype),
        "devices": objective.plan.num_devices,
        **result.summary(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{args.problem} size {args.size} (n={objective.dim_x}, m={objective.dim_f}, "
            f"{objective.dtype}, {objective.deriv_mode}, chunks {list(result.jac_chunk_sizes)})\n"
            f"cost {result.cost:.6e}  optimality {result.optimality:.2e}  "
            f"nfev {result.nfev}  njev {result.njev}  status {result.status}  "
            f"{result.seconds:.2f} s\n{result.message}"
        )
    return 0 if result.success else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
