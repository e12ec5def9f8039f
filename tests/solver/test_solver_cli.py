"""python -m solver: JSON output, exit codes, one-line usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from solver.__main__ import main
from solver_testing import REPO


def test_json_solve_in_fresh_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "solver", "--problem", "curvefit", "--size", "2",
         "--deriv-mode", "blocked", "--jac-chunk-size", "3", "--x64", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dtype"] == "float64"
    assert report["jac_chunk_sizes"] == [3, 3]
    assert report["status"] in (1, 2, 3, 4) and report["success"] is True
    assert report["nfev"] >= report["njev"] >= 1
    assert {"cost", "seconds", "dim_x", "dim_f", "deriv_mode"} <= report.keys()


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--problem", "rosenbrock", "--size", "4", "--jac-chunk-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "rosenbrock size 4" in out and "chunks [3]" in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--problem", "nope"], "invalid choice: 'nope'"),
        (["--problem", "bratu", "--jac-chunk-size", "0"], "'0' must be a positive int or 'auto'"),
        (["--problem", "bratu", "--size", "-3"], "'-3' must be a positive int"),
        (["--problem", "bratu", "--deriv-mode", "forward"], "invalid choice: 'forward'"),
        ([], "required: --problem"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_library_value_error_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--problem", "rosenbrock", "--size", "3"]) == 2
    err = capsys.readouterr().err
    assert "size=3 must be a positive even int" in err and err.count("\n") == 1
