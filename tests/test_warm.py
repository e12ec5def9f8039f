"""jaxcache warm and verify: after a warm, a real solve in a fresh process compiles no solver kernel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jaxcache.cli import main
from jaxcache.configuration import gpu_plugin_installed
from jaxcache_testing import env_with, version_folder


def warm_json(cache: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    """Runs `jaxcache warm --json` in a fresh process, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "warm", "--json", *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def solve_in_fresh_process(cache: Path, *solver_args: str, env: dict[str, str] | None = None) -> dict:
    """`python -m solver` under `jaxcache run --json`: the child never imports jaxcache."""
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "run", "--json", "--",
         sys.executable, "-m", "solver", *solver_args],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def solver_kernel_counts(report: dict) -> dict[str, tuple[int, int]]:
    return {m: (c["hits"], c["misses"]) for m, c in report["modules"].items() if m.startswith("jit_lsq_")}


@pytest.mark.parametrize("devices, x64", [(1, False), pytest.param(1, True, marks=pytest.mark.slow),
                                          pytest.param(2, False, marks=pytest.mark.slow), (2, True)])
def test_a_warmed_solve_compiles_no_solver_kernel(tmp_path: Path, devices: int, x64: bool) -> None:
    cache = tmp_path / "cache"
    flags = ["--problem", "bratu", "--size", "6", "--devices", str(devices)] + (["--x64"] if x64 else [])
    code, report = warm_json(cache, *flags)
    assert code == 0 and report["failed"] == 0 and report["compiled"] > 0
    run_env = env_with(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    solved = solve_in_fresh_process(cache, "--problem", "bratu", "--size", "6", *(["--x64"] if x64 else []),
                                    env=run_env)
    counts = solver_kernel_counts(solved)
    assert set(counts) == {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"}
    assert all(misses == 0 and hits >= 1 for hits, misses in counts.values()), counts


def test_without_warming_the_same_solve_misses(tmp_path: Path) -> None:
    """The control for the test above: the counts are real, not always zero."""
    solved = solve_in_fresh_process(tmp_path / "cold", "--problem", "bratu", "--size", "6")
    counts = solver_kernel_counts(solved)
    assert counts and all(misses >= 1 for _, misses in counts.values())


def test_second_warm_compiles_nothing_and_verify_passes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _, first = warm_json(cache, "--problem", "rosenbrock", "--size", "8", "--jobs", "2")
    assert first["compiled"] > 0
    # With every warning an error, as strict CI runs do: warm's helper processes raise none.
    code, second = warm_json(cache, "--problem", "rosenbrock", "--size", "8", "--jobs", "2", "--verify",
                             env=env_with(PYTHONWARNINGS="error"))
    assert code == 0
    assert second["compiled"] == 0 and second["cached"] == len(second["kernels"]) == len(first["kernels"])
    assert [v["ok"] for v in second["verify"]] == [True] and second["verify"][0]["missed_kernels"] == []


def test_verify_names_the_kernel_that_misses(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    warm_json(cache, "--problem", "bratu", "--size", "6", "--jac-chunk-size", "4")
    # A run with another chunk size looks up another Jacobian kernel.
    proc = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "verify", "--json",
                           "--problem", "bratu", "--size", "6", "--jac-chunk-size", "5"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    run = json.loads(proc.stdout)["runs"][0]
    assert run["missed_kernels"] == ["jit_lsq_jacobian"]


ENTRY_MODULE = """
import jax, jax.numpy as jnp

def good(x):
    return jnp.tanh(x) @ x.T

def bad(x):
    return x @ jnp.ones((3, 3))  # wrong inner dimension for the declared shape

def kernels():
    spec = jax.ShapeDtypeStruct((4, 5), jnp.float32)
    return [("good", jax.jit(good), (spec,)), ("bad", jax.jit(bad), (spec,))]

def not_a_list():
    return 42

def raises():
    raise RuntimeError("the model needs a data file")

def empty():
    return []

def plain(x):
    return x * 2

def not_jitted():
    return [("plain", plain, (jax.ShapeDtypeStruct((3,), jnp.float32),))]

def kills_its_process():
    import os
    os._exit(3)  # as a segfault or an OOM kill would
"""


def test_a_kernel_that_fails_to_compile_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "userkernels.py").write_text(textwrap.dedent(ENTRY_MODULE))
    env = env_with(PYTHONPATH=str(tmp_path))
    code, report = warm_json(tmp_path / "cache", "--entry", "userkernels:kernels",
                             "--problem", "rosenbrock", "--size", "4", env=env)
    assert code == 1
    by_kernel = {(k["target"].split(" ")[0], k["kernel"]): k for k in report["kernels"]}
    assert by_kernel[("userkernels:kernels", "good")]["status"] == "compiled"
    assert by_kernel[("userkernels:kernels", "bad")]["status"] == "failed"
    assert "TypeError" in by_kernel[("userkernels:kernels", "bad")]["reason"]
    assert all(k["status"] == "compiled" or k["status"] == "cached"
               for k in report["kernels"] if k["target"].startswith("rosenbrock"))
    code, again = warm_json(tmp_path / "cache", "--entry", "userkernels:kernels", env=env)
    good = next(k for k in again["kernels"] if k["kernel"] == "good")
    assert good["status"] == "cached"


@pytest.mark.parametrize("entry, message", [
    ("nosuchmodule:fn", "--entry nosuchmodule:fn: ModuleNotFoundError: No module named 'nosuchmodule'"),
    ("userkernels:nosuchfunction", "--entry userkernels:nosuchfunction: AttributeError:"),
    ("userkernels:raises", "--entry userkernels:raises: RuntimeError: the model needs a data file"),
    ("userkernels:empty", "--entry userkernels:empty: returned no kernels"),
    ("userkernels:not_a_list", "--entry userkernels:not_a_list: returned int, not a list"),
    ("userkernels:not_jitted", "--entry userkernels:not_jitted: item 0 ('plain'): plain is not jitted"),
    ("userkernels:kills_its_process", "--entry userkernels:kills_its_process: the process exited with code 3"),
])
def test_entry_mistakes_are_refused_before_any_worker_starts(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "userkernels.py").write_text(textwrap.dedent(ENTRY_MODULE))
    cache = tmp_path / "cache"
    # With a good target beside it: a worker started for that one would make the folder.
    proc = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "warm", "--json",
                           "--problem", "rosenbrock", "--size", "4", "--entry", entry],
                          capture_output=True, text=True, env=env_with(PYTHONPATH=str(tmp_path)), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"jaxcache: error: {message}"), proc.stderr
    assert not cache.exists()


def test_warm_counts_match_the_entries_it_wrote_and_ls_shows_its_compile_seconds(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code, report = warm_json(cache, "--problem", "curvefit", "--size", "8", "--jobs", "1")
    assert code == 0, report
    entries = sorted(p.name[:-6] for p in version_folder(cache).glob("*-cache"))
    compiled = [k for k in report["kernels"] if k["status"] == "compiled"]
    # The "auto" Jacobian is one of its probes: one entry, one compile, and the row says which.
    assert report["compiled"] == len(compiled) == len(entries)
    assert sorted(key for k in compiled for key in k["keys"]) == entries
    jacobian = next(k for k in report["kernels"] if k["kernel"] == "jacobian")
    assert jacobian["status"] == "cached" and jacobian["same_as"].startswith("probe_jacobian[")
    # One figure for compile seconds: the one `ls` shows for the same entry, probes included.
    listed = json.loads(subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "ls", "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    by_key = {e["key"]: e["measured_compile_seconds"] for e in listed}
    for kernel in compiled:
        (key,) = kernel["keys"]
        assert kernel["compile_seconds"] is not None and kernel["compile_seconds"] == by_key[key], (kernel, by_key)
    assert all(k["compile_seconds"] > 0 for k in compiled if k["kernel"].startswith("probe_"))


def test_progress_without_a_terminal_is_one_line_per_kernel_with_the_total_known_from_the_start(
        tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "cache"), "warm",
                           "--problem", "curvefit", "--size", "8", "--problem", "rosenbrock", "--jobs", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("jaxcache: warm [")]
    counts = [line.split("[", 1)[1].split("]", 1)[0].split("/") for line in lines]
    total = int(counts[0][1])
    assert [int(done) for done, _ in counts] == list(range(1, total + 1))
    assert {int(t) for _, t in counts} == {total}  # never grows
    assert total == len([row for row in proc.stdout.splitlines() if row.startswith(("curvefit", "rosenbrock"))])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_ctrl_c_reports_the_kernels_already_done(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "c"), "warm", "--json",
                             "--problem", "kinetics", "--size", "48", "--jobs", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    done = []
    for line in proc.stderr:  # the slow iterate kernel comes last: stop once something is done
        if line.startswith("jaxcache: warm ["):
            status, what = line.split("] ", 1)[1].split(" ", 1)  # "compiled kinetics-48: residual (0.31 s)"
            done.append(what.rsplit(" (", 1)[0].strip())
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True and report["ok"] is False
    names = [f"{k['target']}: {k['kernel']}" for k in report["kernels"]]
    assert done and done[0] in names and len(names) < report["planned"]
    assert "Traceback" not in err


def test_plans_from_pyproject_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jaxcache.warming import plan_from_file, plan_from_pyproject

    (tmp_path / "pyproject.toml").write_text(
        "[tool.jaxcache.warm]\nproblems = ['bratu']\nsizes = [8, 16]\nx64 = true\n"
        "targets = [{problem = 'spectral', size = 32, jac_chunk_size = 4, devices = 2}]\n")
    plan = plan_from_pyproject(tmp_path / "pyproject.toml")
    assert [t.label for t in plan.targets] == ["bratu-8 [x64]", "bratu-16 [x64]", "spectral-32 chunk=4 [x64, 2dev]"]
    (tmp_path / "plan.toml").write_text("problems = ['curvefit']\nderiv_mode = 'blocked'\n")
    assert [t.label for t in plan_from_file(tmp_path / "plan.toml").targets] == ["curvefit-16 blocked"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--problem", "banana"], "problem 'banana' must be one of"),
        (["--size", "0"], "size 0 must be a positive integer"),
        (["--jac-chunk-size", "-3"], "jac_chunk_size '-3' must be a positive int or 'auto'"),
        (["--entry", "no colon"], "must look like 'package.module:function'"),
        (["--plan", "missing.toml"], "plan file missing.toml does not exist"),
        (["--devices", "0"], "Invalid value for '--devices'"),
        (["--plan", "bad.toml"], "unknown key 'problem'"),
        (["--plan", "bad.toml", "--x64"], "unknown key 'problem'"),
        pytest.param(["--platform", "gpu"], "no JAX GPU plugin is installed",
                     marks=pytest.mark.skipif(gpu_plugin_installed(), reason="a GPU plugin is installed")),
    ],
)
def test_bad_warm_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("problem = 'bratu'\n")
    result = CliRunner().invoke(main, ["--cache-dir", str(tmp_path / "c"), "warm", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "c").exists()


def test_verify_reports_convergence(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code, report = warm_json(cache, "--problem", "rosenbrock", "--size", "4", "--verify")
    assert code == 0 and report["verify"][0]["converged"] is True


SHARED_ENTRY_MODULE = """
import os, sys
import jax, jax.numpy as jnp

def _built(name):  # who called: the warm's preflight or a worker (python -m puts the module's path in argv)
    with open(os.environ["BUILD_LOG"], "a") as log:
        log.write(f"{name} {os.getpid()} {os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE')} "
                  f"{os.path.basename(sys.argv[0])}\\n")

def _kernel(scale):
    def kernel(x):
        return jnp.sin(x * scale) @ x.T
    kernel.__name__ = f"kernel_times_{scale}"
    return jax.jit(kernel)

def _list(name, count):
    _built(name)
    spec = jax.ShapeDtypeStruct((8, 8), jnp.float32)
    return [(f"{name}{i}", _kernel(i + 10 * len(name)), (spec,)) for i in range(count)]

@jax.jit
def g(x):
    return jnp.cumsum(x) * 2

def same_fn_two_shapes():
    return [(g, (jax.ShapeDtypeStruct((3,), jnp.float32),)), (g, (jax.ShapeDtypeStruct((4,), jnp.float32),))]

def wide():
    return [("w", g, (jax.ShapeDtypeStruct((5,), jnp.float64),))]

def dies():
    # The warm's preflight calls it first and gets its kernel; the worker that builds it next dies
    # (os._exit, as a segfault or an OOM kill would: no exception, no cleanup).
    checked = os.environ["BUILD_LOG"] + ".checked"
    if os.path.exists(checked):
        _built("dies")
        os._exit(3)
    open(checked, "w").close()
    return _list("dies", 1)

def one_a(): return _list("a", 1)
def one_b(): return _list("bb", 1)
def one_c(): return _list("ccc", 1)
def many(): return _list("dddd", 6)
"""


def test_workers_build_each_target_once_and_compile_each_kernel_once(tmp_path: Path) -> None:
    (tmp_path / "sharedkernels.py").write_text(textwrap.dedent(SHARED_ENTRY_MODULE))
    log = tmp_path / "builds.log"
    env = env_with(PYTHONPATH=str(tmp_path), BUILD_LOG=str(log))
    entries = [x for e in ("one_a", "one_b", "one_c", "many") for x in ("--entry", f"sharedkernels:{e}")]
    code, report = warm_json(tmp_path / "cache", "--jobs", "2", *entries, env=env)
    assert code == 0, report
    lines = [line.split() for line in log.read_text().splitlines()]
    # The preflight calls each entry once, in a process of its own, before any worker starts.
    assert sorted(name for name, _, _, who in lines if who == "preflight.py") == ["a", "bb", "ccc", "dddd"]
    builds = [name for name, _, _, who in lines if who == "worker.py"]
    assert len(builds) + 4 == len(lines)
    # Workers that may share a GPU do not each grab most of its memory.
    assert {prealloc for _, _, prealloc, _ in lines} == {"false"}
    # A target of one kernel is built by one worker only; a worker with nothing left to
    # build may build a bigger target a second time to help with its kernels.
    assert sorted(b for b in builds if b != "dddd") == ["a", "bb", "ccc"]
    assert 1 <= builds.count("dddd") <= 2
    names = sorted(k["kernel"] for k in report["kernels"])
    assert names == sorted(["a0", "bb0", "ccc0", *(f"dddd{i}" for i in range(6))])
    assert {k["status"] for k in report["kernels"]} == {"compiled"}


def test_claim_board(tmp_path: Path) -> None:
    from jaxcache.warming.claims import ClaimBoard

    assert ClaimBoard.open(None) is None and ClaimBoard.open(tmp_path / "missing") is None
    board, other = ClaimBoard.open(tmp_path), ClaimBoard(tmp_path)
    assert board is not None
    assert board.claim_build("t") and not other.claim_build("t")
    assert board.claim_kernel("t", "k") and not other.claim_kernel("t", "k") and other.is_claimed("t", "k")
    assert other.published("t") is None and board.builder_alive("t")
    board.publish("t", ["k", "j"])
    assert other.wait_for_any(["t"]) == ("t", other.published("t"))
    assert other.published("t").names == ("k", "j")
    # A target whose builder died without publishing is given up, not waited on forever.
    subprocess.run([sys.executable, "-c", f"from jaxcache.warming.claims import ClaimBoard; "
                    f"assert ClaimBoard({str(tmp_path)!r}).claim_build('u')"], check=True)
    assert not board.builder_alive("u") and board.wait_for_any(["u"]) is None
    board.publish("v", None)
    assert board.published("v").names is None


def test_one_function_at_two_shapes_is_two_kernels_for_warm_and_verify(tmp_path: Path) -> None:
    (tmp_path / "sharedkernels.py").write_text(textwrap.dedent(SHARED_ENTRY_MODULE))
    env = env_with(PYTHONPATH=str(tmp_path), BUILD_LOG=str(tmp_path / "log"))
    cache = tmp_path / "cache"
    code, report = warm_json(cache, "--jobs", "2", "--entry", "sharedkernels:same_fn_two_shapes", "--verify", env=env)
    assert code == 0, report
    assert sorted(k["kernel"] for k in report["kernels"]) == ["g", "g#2"]
    assert {k["status"] for k in report["kernels"]} == {"compiled"}
    assert report["verify"][0]["modules"] == {"g": {"requests": 1, "hits": 1, "misses": 0},
                                              "g#2": {"requests": 1, "hits": 1, "misses": 0}}
    # Without one of the two entries, verify names the kernel that misses.
    (next(version_folder(cache).glob("jit_g-*-cache"))).unlink()
    proc = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "verify", "--json",
                           "--entry", "sharedkernels:same_fn_two_shapes"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["runs"][0]["missed_kernels"] in (["g"], ["g#2"])


def test_a_float64_kernel_warmed_without_x64_gets_a_warning(tmp_path: Path) -> None:
    (tmp_path / "sharedkernels.py").write_text(textwrap.dedent(SHARED_ENTRY_MODULE))
    env = env_with(PYTHONPATH=str(tmp_path), BUILD_LOG=str(tmp_path / "log"))
    code, report = warm_json(tmp_path / "cache", "--entry", "sharedkernels:wide", env=env)
    assert code == 0 and any("float64" in w and "--x64" in w for w in report["warnings"]), report
    code, report = warm_json(tmp_path / "cache", "--entry", "sharedkernels:wide", "--x64", env=env)
    assert code == 0 and not report["warnings"] and report["kernels"][0]["status"] == "compiled", report


def test_a_worker_that_dies_while_building_does_not_hang_the_others(tmp_path: Path) -> None:
    (tmp_path / "sharedkernels.py").write_text(textwrap.dedent(SHARED_ENTRY_MODULE))
    env = env_with(PYTHONPATH=str(tmp_path), BUILD_LOG=str(tmp_path / "log"))
    proc = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "cache"), "warm", "--json",
                           "--jobs", "2", "--entry", "sharedkernels:dies", "--entry", "sharedkernels:one_a"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert any(k["status"] == "failed" and "exited with code 3" in (k["reason"] or "") for k in report["kernels"])
    assert [k["status"] for k in report["kernels"] if k["kernel"] == "a0"] == ["compiled"]



def test_folders_named_like_the_packages_in_the_current_directory_are_not_imported(tmp_path: Path) -> None:
    # python -m puts the current directory first on sys.path: a project's own solver/ folder
    # (or a cache folder called jaxcache) must not replace the installed packages in workers.
    (tmp_path / "solver").mkdir()
    (tmp_path / "jaxcache").mkdir()
    (tmp_path / "sharedkernels.py").write_text(textwrap.dedent(SHARED_ENTRY_MODULE))  # an entry found here
    command = Path(sys.executable).with_name("jaxcache")  # the console script, as a user runs it
    proc = subprocess.run([str(command), "--cache-dir", "jaxcache", "warm", "--json", "--verify",
                           "--problem", "rosenbrock", "--size", "4", "--entry", "sharedkernels:one_a"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=env_with(BUILD_LOG=str(tmp_path / "log")))
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["failed"] == 0, proc.stderr
    assert all(v["ok"] for v in report["verify"]), report["verify"]


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.append(int(status.parent.name))
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, None)])
def test_stopping_a_warm_stops_its_workers(tmp_path: Path, signum: int, code: int | None) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "c"), "warm",
                             "--problem", "kinetics", "--size", "48", "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert len(workers) == 2, proc.communicate()
    time.sleep(1.0)  # into the workers' JAX import or first compile
    proc.send_signal(signum)  # the warm alone, not its process group: a kill from outside
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (code if code is not None else -signum), err
    deadline = time.monotonic() + 10  # SIGTERM: the workers learn it from the kernel (PDEATHSIG)
    while not all(_gone(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(w) for w in workers)
    assert "Traceback" not in err


def test_the_preflight_counts_bundled_kernels_as_the_solver_lists_them(tmp_path: Path) -> None:
    """`bundled_kernel_count` mirrors `solver.kernels` without building (which compiles the probes):
    pinned here for "auto" in both modes, a fixed chunk size, and sizes with one or two probe sizes."""
    from jaxcache.warming import build_plan, preflight

    plan = build_plan(problems=["curvefit", "bratu"], sizes=[4, 12]).targets + \
        build_plan(problems=["kinetics"], sizes=[8], deriv_mode="blocked").targets + \
        build_plan(problems=["spectral"], sizes=[8], jac_chunk_size=3).targets
    from jaxcache.warming.plan import WarmPlan

    counted = preflight(WarmPlan(targets=plan, source="test")).kernels
    listed = json.loads(subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, solver
        from jaxcache.warming.plan import Target
        out = {{}}
        for raw in json.loads({json.dumps(json.dumps([t.as_dict() for t in plan]))}):
            t = Target(**raw)
            objective, x0 = solver.problems.get(t.problem, t.size, deriv_mode=t.deriv_mode,
                                                jac_chunk_size=t.jac_chunk_size)
            out[t.label] = len(solver.kernels(objective, x0))
        print(json.dumps(out))
        """)], capture_output=True, text=True, check=True, timeout=600).stdout)
    assert counted == listed
    assert len(set(listed.values())) > 1  # the cases differ, so the rule is exercised


def test_the_plan_precedence_is_a_library_function(tmp_path: Path) -> None:
    from jaxcache import choose_plan
    from jaxcache.errors import UsageError

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[tool.jaxcache.warm]\nproblems = ['bratu']\nsizes = [8]\n")
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text("problems = ['spectral']\n")
    # Flags first, then a plan file, then pyproject, then the bundled default.
    assert [t.label for t in choose_plan(problems=["curvefit"], project_dir=project).targets] == ["curvefit-16"]
    assert [t.label for t in choose_plan(plan_file=plan_file, project_dir=project).targets] == ["spectral-16"]
    assert [t.label for t in choose_plan(project_dir=project).targets] == ["bratu-8"]
    default = choose_plan(project_dir=tmp_path, options={"x64": True})
    assert default.source == "default (bundled problems)" and all(t.x64 for t in default.targets)
    # An option set on purpose does not silently lose to a plan that sets its own.
    with pytest.raises(UsageError, match="--x64 does not apply to a plan from"):
        choose_plan(project_dir=project, options={"x64": True}, given=["x64"])
    with pytest.raises(UsageError, match="not both"):
        choose_plan(problems=["bratu"], plan_file=plan_file)
    assert choose_plan(project_dir=project).as_dict() == {
        "source": f"[tool.jaxcache.warm] of {project / 'pyproject.toml'}",
        "targets": [{"problem": "bratu", "entry": None, "size": 8, "jac_chunk_size": "auto", "deriv_mode": "batched",
                     "x64": False, "platform": None, "devices": 1}]}
