"""Faults: jaxcache killed mid-way, damaged caches, hostile file systems, and bad input.

(a) `jaxcache prune` and `jaxcache warm` killed with SIGKILL at seeded random
    points: the cache stays consistent (or `check --repair` makes it so), a
    fresh JAX process trips over nothing, and rerunning the command finishes.
(b) One table of damage (truncated, empty, garbage, missing -atime, orphan
    -atime, foreign folder path, symlink, read-only folder, full disk): each
    is found by `check`, one line per finding, repaired where safe, and no
    command crashes.
(c) One table of bad input across every command: a one-line error, the
    documented exit code (2 usage, 1 other), nothing in the folder changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jaxcache import jaxformat
from jaxcache.cli import main
from jaxcache_testing import (can_mount, compile_program, env_with, read_only_mount, run_compile, run_python,
                              version_folder)

JAX_READ_ERROR = "Error reading persistent compilation cache entry"
JAX_WRITE_ERROR = "Error writing persistent compilation cache entry"


def jc(*args: str) -> Result:
    """The CLI in-process; an exception that escapes it fails the test (that is a crash)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def jc_proc(root: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(root), *args], capture_output=True,
                          text=True, env=env, timeout=600, **kw)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes (and every symlink's target), except jaxcache's own index folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if ".jaxcache" in rel.parts:
            continue
        if p.is_symlink():
            out[str(rel)] = b"->" + os.readlink(p).encode()
        elif p.is_file():
            out[str(rel)] = p.read_bytes()
    return out


def age(paths, seconds: float = 600) -> None:
    past = time.time() - seconds
    for p in paths:
        os.utime(p, (past, past), follow_symlinks=False)


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


def fake_key(i: int, module: str = "jit_fn") -> str:
    return f"{module}{i}-{hashlib.sha256(str(i).encode()).hexdigest()}"


# --------------------------------------------------------------------------------------------------
# (a) SIGKILL at random points
# --------------------------------------------------------------------------------------------------

SYNTHETIC_ENTRIES = 6000


@pytest.fixture(scope="module")
def big_capped_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A capped cache: the real entries of COMPILE_PROGRAM (recently used) plus thousands of
    copies of a real entry under valid names, each with its -atime, all older and in distinct LRU order."""
    root = tmp_path_factory.mktemp("big") / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXCACHE_", "JAX_COMPILATION"))}
    env.update(JAXCACHE_DIR=str(root), JAXCACHE_MAX_SIZE="1GB", JAX_PLATFORMS="cpu",
               XDG_CONFIG_HOME=str(tmp_path_factory.mktemp("cfg")))
    run_compile(env)
    folder = version_folder(root)
    real = sorted(folder.glob("*-cache"))
    age(real, 600)  # written 10 min ago (check looks at them), used just now (their -atime)
    data = next(p for p in real if p.name.startswith("jit_step-")).read_bytes()
    start = time.time() - 86400
    for i in range(SYNTHETIC_ENTRIES):
        key = fake_key(i)
        cache, atime = folder / jaxformat.cache_file_name(key), folder / jaxformat.atime_file_name(key)
        cache.write_bytes(data)
        used = start + i
        atime.write_bytes(jaxformat.encode_atime(int(used * 1e9)))
        os.utime(cache, (start - 3600, start - 3600))
        os.utime(atime, (used, used))
    real_bytes = sum(p.stat().st_size for p in real)
    target = real_bytes + (SYNTHETIC_ENTRIES // 10) * len(data)  # keeps the real entries and a tenth of the rest
    return root, target


def count_caches(root: Path) -> int:
    return sum(1 for _ in version_folder(root).glob("*-cache"))


def run_killed(cmd: list[str], delay: float, env: dict[str, str],
               after: Callable[[], bool] | None = None) -> tuple[bool, float]:
    """Starts cmd in its own process group and SIGKILLs the whole group (the command and any worker
    processes, as a job scheduler would) `delay` seconds after start, or after `after()` turns true.
    Returns whether it was still running when killed, and the seconds from start to the kill."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    if after is not None:
        deadline = time.time() + 120
        while not after() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    time.sleep(delay)
    killed_at = time.perf_counter() - start
    alive = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline:  # every process of the group is gone before we look
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    return alive, killed_at


def check_then_repair(root: Path, env: dict[str, str], allowed: set[str]) -> list[str]:
    """`check --json` is clean, or only has `allowed` kinds and is clean after `check --repair`."""
    first = jc_proc(root, "check", "--json", env=env)
    assert "Traceback" not in first.stderr, first.stderr
    report = json.loads(first.stdout)
    kinds = sorted(f["kind"] for f in report["findings"])
    if first.returncode == 0:
        assert report["ok"] is True
        return kinds
    assert set(kinds) <= allowed, report["findings"]
    repaired = jc_proc(root, "check", "--repair", "--yes", "--json", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    again = jc_proc(root, "check", "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["ok"] is True, again.stdout
    return kinds


@pytest.mark.slow
def test_prune_killed_at_random_points(big_capped_cache: tuple[Path, int], tmp_path: Path) -> None:
    template, target = big_capped_cache
    env = env_with(JAXCACHE_MAX_SIZE="1GB")
    prune = ["prune", "--max-size", str(target), "--yes", "--json"]
    total = count_caches(template)

    # The uninterrupted run: how long it takes, and where it ends.
    reference = tmp_path / "reference"
    shutil.copytree(template, reference, symlinks=True)
    t0 = time.perf_counter()
    done = jc_proc(reference, *prune, env=env)
    full_seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    finished = count_caches(reference)
    assert finished < total

    outcomes = []
    for seed in (1, 2, 3):
        root = tmp_path / f"seed{seed}"
        shutil.copytree(template, root, symlinks=True)
        # Killed a random moment after the first deletion (timing it from the start missed the
        # deletions on a busy machine, where start-up and scan take most of the run).
        delay = random.Random(seed).uniform(0.0, 0.1) * full_seconds
        alive, _ = run_killed([sys.executable, "-m", "jaxcache", "--cache-dir", str(root), *prune], delay, env,
                              after=lambda root=root: count_caches(root) < total)
        left = count_caches(root)
        outcomes.append((seed, round(delay, 2), alive, left))

        # Consistent, or repaired: a kill between a -cache and its -atime leaves an orphan -atime, nothing else.
        folder = version_folder(root)
        caches = {p.name[:-6] for p in folder.glob("*-cache")}
        assert all((folder / jaxformat.atime_file_name(k)).exists() for k in caches), "a -cache without its -atime"
        assert jc_proc(root, "inspect", "--json", env=env).returncode == 0
        check_then_repair(root, env, allowed={"orphan-atime"})

        # A fresh JAX process (capped, so it takes the lock and reads -atime files) hits the real entries
        # and trips over nothing.
        proc = run_python(compile_program("import jaxcache; jaxcache.configure(max_size='1GB')"),
                          env=env_with(JAXCACHE_DIR=str(root)))
        events = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("EVENTS"))[6:])
        assert events["misses"] == [] and len(events["hits"]) >= 3, events
        assert JAX_READ_ERROR not in proc.stderr and JAX_WRITE_ERROR not in proc.stderr, proc.stderr

        # The rerun finishes the job.
        rerun = jc_proc(root, *prune, env=env)
        assert rerun.returncode == 0, rerun.stderr
        inspected = json.loads(jc_proc(root, "inspect", "--json", env=env).stdout)
        assert inspected["bytes"] <= target
        assert count_caches(root) == finished
        check_then_repair(root, env, allowed=set())
    print(f"prune of {total} entries took {full_seconds:.2f}s; (seed, delay, killed mid-run, entries left): "
          f"{outcomes}")
    assert any(alive and finished < left < total for _, _, alive, left in outcomes), (
        f"no kill landed while entries were being deleted: {outcomes}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_warm_killed_at_a_random_point(tmp_path: Path, seed: int) -> None:
    root = tmp_path / "cache"
    env = env_with()
    warm = ["warm", "--problem", "rosenbrock", "--size", "4"]  # 5 kernels
    # A random point while kernels are being written: after the k-th entry appears, plus a random delay.
    rng = random.Random(seed)
    k, delay = rng.randint(1, 4), rng.uniform(0.0, 0.4)
    folder = root / f"jaxlib-{version('jaxlib')}"
    alive, killed_at = run_killed([sys.executable, "-m", "jaxcache", "--cache-dir", str(root), *warm], delay, env,
                                  after=lambda: folder.is_dir() and sum(1 for _ in folder.glob("*-cache")) >= k)
    written = sum(1 for _ in folder.glob("*-cache")) if folder.is_dir() else 0
    leftovers = []
    if root.exists():
        folder = version_folder(root)
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith(".jaxcache-tmp-"))
        age([p for p in folder.iterdir() if p.is_file()], 60)  # nobody writes now: let check see everything
        for args in (["inspect", "--json"], ["ls", "--json"]):
            proc = jc_proc(root, *args, env=env)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        kinds = check_then_repair(root, env, allowed=set())  # atomic writes: nothing half-written, ever
        for p in folder.glob("*-cache"):
            jaxformat.decompress_entry(p.read_bytes())
    else:
        kinds = []
    print(f"seed {seed}: killed {delay:.2f}s after entry #{k} appeared, {killed_at:.2f}s after start (running: "
          f"{alive}, {written} entries written); check found {kinds}; temp files left: {leftovers}")
    assert alive, "warm finished before the kill: the kill point is not mid-run"

    # A fresh solve in a fresh process trips over nothing the killed warm left behind.
    solve = jc_proc(root, "run", "--json", "--", sys.executable, "-m", "solver", "--problem", "rosenbrock",
                    "--size", "4", env=env)
    assert solve.returncode == 0, solve.stderr[-3000:]
    assert JAX_READ_ERROR not in solve.stderr and JAX_WRITE_ERROR not in solve.stderr, solve.stderr[-3000:]

    # The rerun finishes the job, and a fresh process hits every kernel.
    rerun = jc_proc(root, *warm, "--verify", "--json", env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    report = json.loads(rerun.stdout)
    assert report["failed"] == 0 and report["kernels"]
    assert all(k["status"] in ("compiled", "cached") for k in report["kernels"]), report["kernels"]
    assert [v["ok"] for v in report["verify"]] == [True], report["verify"]


# --------------------------------------------------------------------------------------------------
# (b) Damage, detected, reported in one line, repaired where safe, never a crash
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign_entries(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Entries from a cache written by plain JAX (XLA caches on, so the folder's path is in each key)."""
    other = tmp_path_factory.mktemp("foreign") / "plain-jax-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXCACHE_", "JAX_COMPILATION"))}
    env.update(JAX_PLATFORMS="cpu")
    run_compile(env, configure=(
        "import jax\n"
        f"jax.config.update('jax_compilation_cache_dir', {str(other)!r})\n"
        "jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"))
    entries = sorted(other.glob("*-cache"))
    assert entries
    return entries


def _entry(root: Path, module: str) -> Path:
    return next(version_folder(root).glob(f"{module}-*-cache"))


def truncated(root: Path, ctx: dict) -> list[Path]:
    victim = _entry(root, "jit_step")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return [victim]


def zero_length(root: Path, ctx: dict) -> list[Path]:
    victim = _entry(root, "jit_cost")
    victim.write_bytes(b"")
    return [victim]


def garbage(root: Path, ctx: dict) -> list[Path]:
    victim = version_folder(root) / jaxformat.cache_file_name(fake_key(7, "jit_garbage"))
    victim.write_bytes(b"\x00GARBAGE" + random.Random(7).randbytes(3000))
    return [victim]


def garbage_zlib(root: Path, ctx: dict) -> list[Path]:
    """Starts like zlib (so prune's header check passes) but the stream is corrupt."""
    victim = version_folder(root) / jaxformat.cache_file_name(fake_key(8, "jit_badzlib"))
    good = zlib.compress(b"\x00\x00\x00\x01" + random.Random(8).randbytes(4000))
    victim.write_bytes(good[:20] + bytes(b ^ 0xFF for b in good[20:60]) + good[60:])
    return [victim]


def missing_atime(root: Path, ctx: dict) -> list[Path]:
    """A capped cache (every entry has its -atime) where one -atime is gone: JAX's next write would fail."""
    entries = sorted(version_folder(root).glob("*-cache"))
    for p in entries[1:]:
        p.with_name(p.name[:-6] + "-atime").write_bytes(jaxformat.encode_atime(time.time_ns()))
    return [entries[0]]


def orphan_atime(root: Path, ctx: dict) -> list[Path]:
    orphan = version_folder(root) / jaxformat.atime_file_name(fake_key(9, "jit_gone"))
    orphan.write_bytes(jaxformat.encode_atime(time.time_ns()))
    return [orphan]


def foreign_path(root: Path, ctx: dict) -> list[Path]:
    copies = []
    for src in ctx["foreign"]:
        dst = version_folder(root) / src.name
        shutil.copy2(src, dst)
        copies.append(dst)
    return copies


def symlink(root: Path, ctx: dict) -> list[Path]:
    outside = ctx["tmp"] / "precious"
    outside.write_bytes(zlib.compress(b"\x00\x00\x00\x01precious data"))
    link = version_folder(root) / jaxformat.cache_file_name(fake_key(10, "jit_link"))
    link.symlink_to(outside)
    return [link]


@dataclass(frozen=True)
class Fault:
    name: str
    damage: Callable[[Path, dict], list[Path]]
    kinds: frozenset[str]
    repairable: bool = True
    problem: bool = True  # False: reported as information, `check` still passes
    applies: bool = True  # False: the installed jaxlib makes it no fault (its test checks that nothing is found)
    env: dict[str, str] = field(default_factory=dict)
    where: str = "tmp"  # "tmp", "read-only" (a read-only bind mount) or "full" (a full 64k tmpfs)


FAULTS = [
    Fault("truncated", truncated, frozenset({"corrupt"})),
    Fault("zero-length", zero_length, frozenset({"corrupt"})),
    Fault("garbage", garbage, frozenset({"corrupt"})),
    Fault("garbage-zlib", garbage_zlib, frozenset({"corrupt"})),
    Fault("missing-atime-capped", missing_atime, frozenset({"missing-atime"}), env={"JAXCACHE_MAX_SIZE": "1GB"},
          applies=jaxformat.missing_atime_breaks_writes(metadata.version("jaxlib"))),
    Fault("orphan-atime", orphan_atime, frozenset({"orphan-atime"})),
    # Valid entries that a process pointed at their writer's folder still hits: reported, never deleted.
    Fault("foreign-path", foreign_path, frozenset({"foreign-path"}), repairable=False, problem=False,
          applies=jaxformat.path_in_key(metadata.version("jaxlib"))),
    Fault("symlink", symlink, frozenset({"symlink"}), repairable=False),
    Fault("read-only-truncated", truncated, frozenset({"corrupt"}), repairable=False, where="read-only"),
    Fault("full-disk-truncated", truncated, frozenset({"corrupt"}), where="full"),
]

READ_COMMANDS = [
    ["inspect"], ["inspect", "--json"], ["ls"], ["ls", "--json"], ["check"], ["check", "--json"],
    ["prune", "--max-size", "0", "--dry-run"], ["prune", "--stale", "--dry-run", "--json"],
    ["clear", "--dry-run"], ["clear", "--dry-run", "--json"],
]


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "64k") -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a full disk needs a tiny tmpfs: mount needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(fs: Path) -> None:
    """Fills a file system to the last byte, with files outside the cache root."""
    for name, chunk in (("filler", 4096), ("filler-tail", 1)):
        fd = os.open(fs / name, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
        finally:
            os.close(fd)
    with pytest.raises(OSError):
        (fs / "probe").write_bytes(b"x" * 4096)


@contextlib.contextmanager
def placed(fault: Fault, cache: Path, tmp_path: Path) -> Iterator[Path]:
    """The cache where the fault needs it: as it is, on a full tiny tmpfs, or (later) read-only."""
    if fault.where != "full":
        yield cache
        return
    fs = tmp_path / "tinyfs"
    with tiny_tmpfs(fs):
        root = fs / "cache"
        shutil.copytree(cache, root, symlinks=True, ignore=shutil.ignore_patterns(".jaxcache"))
        yield root


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_damage_is_found_reported_and_repaired(fault: Fault, cache: Path, tmp_path: Path,
                                               foreign_entries: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    if fault.where == "read-only" and not can_mount():
        pytest.skip("a read-only folder needs a read-only bind mount (root and mount); root ignores file modes")
    for name, value in fault.env.items():
        monkeypatch.setenv(name, value)
    with placed(fault, cache, tmp_path) as root:
        age([p for p in root.rglob("*") if p.is_file()])
        damaged = fault.damage(root, {"tmp": tmp_path, "foreign": foreign_entries})
        age(damaged)  # older than check's 10 s in-progress window
        if not fault.applies:  # this jaxlib does not make it a fault: nothing to find
            result = jc("--cache-dir", str(root), "check", "--json")
            assert result.exit_code == 0 and json.loads(result.stdout)["findings"] == [], result.output
            return
        if fault.where == "full":
            fill(root.parent)
        ro = read_only_mount(root) if fault.where == "read-only" else contextlib.nullcontext()
        before = snapshot(root)
        with ro:
            # No command crashes; each exits 0 or 1, an error is one line; looking changes nothing.
            for args in READ_COMMANDS:
                result = jc("--cache-dir", str(root), *args)
                assert result.exit_code in (0, 1), (args, result.exit_code, result.output)
                assert "Traceback" not in result.output
                if result.exit_code == 1 and args[0] != "check":  # check: exit 1 means "found problems"
                    assert one_line(result.stderr), (args, result.stderr)
            assert snapshot(root) == before

            # Detected, one line per finding.
            found_code = 1 if fault.problem else 0
            result = jc("--cache-dir", str(root), "check", "--json")
            assert result.exit_code == found_code, result.output
            findings = json.loads(result.stdout)["findings"]
            assert {f["kind"] for f in findings} == fault.kinds, findings
            assert {Path(f["path"]) for f in findings} == set(damaged), findings
            text = jc("--cache-dir", str(root), "check")
            assert text.exit_code == found_code
            lines = text.stdout.strip().splitlines()
            assert len(lines) == len(findings), text.stdout
            for line in lines:
                assert any(f": {kind}: " in line for kind in fault.kinds), line
            assert one_line(text.stderr), text.stderr

            # Repaired where safe.
            repaired = jc("--cache-dir", str(root), "check", "--repair", "--yes", "--json")
            report = json.loads(repaired.stdout)
            if fault.repairable:
                assert repaired.exit_code == 0, repaired.output
                assert all(f["repaired"] for f in report["findings"]), report["findings"]
                after = jc("--cache-dir", str(root), "check", "--json")
                assert after.exit_code == 0 and json.loads(after.stdout)["ok"] is True, after.output
                changed = {k for k in set(before) | set(snapshot(root)) if before.get(k) != snapshot(root).get(k)}
                touched = {str(p.relative_to(root)) for p in damaged}
                touched |= {t[:-6] + "-atime" for t in touched} | {t + ".quarantined" for t in touched}
                touched.add(str(version_folder(root).relative_to(root) / ".lockfile"))  # JAX's lock, taken to repair
                assert changed <= touched, changed - touched
                if fault.name == "garbage":
                    # Contents that do not prove it JAX's: moved aside, not deleted; JAX no longer reads it.
                    (victim,) = damaged
                    assert "moved aside" in report["findings"][0]["repair_note"]
                    assert not victim.exists() and before[str(victim.relative_to(root))] == snapshot(root)[
                        str(victim.relative_to(root)) + ".quarantined"]
            else:
                assert repaired.exit_code == found_code, repaired.output
                assert not any(f["repaired"] for f in report["findings"])
                assert {f["kind"] for f in report["findings"]} == fault.kinds
                assert snapshot(root) == before
            if fault.where == "read-only":
                result = jc("--cache-dir", str(root), "clear", "--yes")
                assert result.exit_code == 1 and "read-only" in result.stderr.lower() and one_line(result.stderr)
                assert snapshot(root) == before
        if fault.name == "missing-atime-capped":
            # With the -atime back, JAX can write to the capped cache again (jax#39880).
            proc = run_python("import jaxcache, jax, jax.numpy as jnp\n"
                              "jaxcache.configure(max_size='1GB')\n"
                              "jax.jit(lambda x: jnp.cos(x) * 3)(jnp.ones(5)).block_until_ready()\n",
                              env=env_with(JAXCACHE_DIR=str(root)))
            assert JAX_WRITE_ERROR not in proc.stderr, proc.stderr


def test_full_disk_jax_write_leaves_nothing_partial(cache: Path, tmp_path: Path) -> None:
    """JAX writing into a full cache (through jaxcache.configure's atomic writes): a warning, no crash,
    no partial entry or temporary file; every command still works on the full disk."""
    fs = tmp_path / "tinyfs"
    with tiny_tmpfs(fs):
        root = fs / "cache"
        shutil.copytree(cache, root, symlinks=True, ignore=shutil.ignore_patterns(".jaxcache"))
        fill(fs)
        before = snapshot(root)
        proc = run_python("import jaxcache, jax, jax.numpy as jnp\n"
                          "jaxcache.configure()\n"
                          "print(float(jax.jit(lambda x: jnp.sum(jnp.cos(x) * 7))(jnp.ones(64))))\n",
                          env=env_with(JAXCACHE_DIR=str(root)), check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        float(proc.stdout.strip().splitlines()[-1])
        folder = version_folder(root)
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".jaxcache-tmp-")]
        for p in folder.glob("*-cache"):
            jaxformat.decompress_entry(p.read_bytes())
        for args in READ_COMMANDS + [["check", "--repair", "--yes"], ["prune", "--max-size", "0", "--yes"]]:
            result = jc("--cache-dir", str(root), *args)
            assert result.exit_code in (0, 1), (args, result.output)
            if result.exit_code == 1 and args[0] != "check":
                assert one_line(result.stderr), (args, result.stderr)
        assert not list(folder.glob("*-cache"))  # prune --max-size 0 could delete on a full disk
        assert set(snapshot(root)) - set(before) <= {str(folder.relative_to(root) / ".lockfile")}


def test_run_does_not_count_a_write_that_failed(tmp_path: Path) -> None:
    """JAX logs a write before making it; on a full disk the write fails (a warning)."""
    fs = tmp_path / "tinyfs"
    with tiny_tmpfs(fs):
        root = fs / "cache"
        assert jc("--cache-dir", str(root), "run", "--", "true").exit_code == 0  # the version folder and its marker
        fill(fs)
        ran = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(root), "run", "--json", "--",
                              sys.executable, "-c", "import jax; jax.jit(lambda x: x * 11)(2.0)"],
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "Error writing persistent compilation cache entry" in ran.stderr
        report = json.loads(ran.stdout.strip().splitlines()[-1])
        assert report["misses"] >= 1 and report["writes"] == 0, report


# --------------------------------------------------------------------------------------------------
# (c) Bad input: one line, the documented exit code, nothing changed
# --------------------------------------------------------------------------------------------------

USER_KERNELS = """
import jax, jax.numpy as jnp

def not_a_list():
    return 42

def raises():
    raise RuntimeError("boom in user code")

def wrong_items():
    return [("only-a-name", 1)]
"""

# (args after `--cache-dir CACHE`, exit code, text expected in the error). CACHE, FILE, HOME, MISSING
# and PLAN:<name> are replaced by paths. code 2: bad usage; 1: everything else.
BAD_INPUT = [
    (["prune", "--max-size", "5XB", "--yes"], 2, "invalid size '5XB'"),
    (["prune", "--max-size", "-1", "--yes"], 2, "invalid size '-1'"),
    (["prune", "--max-size", "1.5.5GB", "--yes"], 2, "invalid size"),
    (["prune", "--older-than", "tomorrow", "--yes"], 2, "invalid duration 'tomorrow'"),
    (["prune", "--older-than", "30", "--yes"], 2, "invalid duration '30'"),
    (["prune", "--older-than=-5d", "--yes"], 2, "invalid duration '-5d'"),
    (["prune", "--older-than", "99999999999999999999d", "--yes"], 2, "duration"),
    (["prune", "--yes"], 2, "nothing to prune"),
    (["prune", "--name", "", "--yes"], 2, "invalid --name pattern"),
    (["prune", "--name", "a/b", "--yes"], 2, "invalid --name pattern"),
    (["ls", "--name", "x[y"], 2, "unbalanced"),
    (["prune", "--keep-version", "0.9.2", "--yes"], 2, "--keep-version only applies with --stale"),
    (["clear"], 2, "--yes"),  # no terminal, no --yes: refuses rather than waits
    (["ls", "--sort", "colour"], 2, "Invalid value for '--sort'"),
    (["inspect", "--top", "many"], 2, "Invalid value for '--top'"),
    (["hook", "--shell", "tcsh"], 2, "Invalid value for '--shell'"),
    (["frobnicate"], 2, "No such command 'frobnicate'"),
    (["run"], 2, "Missing argument"),
    (["run", "--", "/nonexistent/program"], 127, "command not found"),
    (["warm", "--problem", "banana"], 2, "problem 'banana' must be one of"),
    (["verify", "--problem", "banana"], 2, "problem 'banana' must be one of"),
    (["warm", "--size", "0"], 2, "size 0 must be a positive integer"),
    (["warm", "--size", "big"], 2, "Invalid value for '--size'"),
    (["warm", "--jobs", "0"], 2, "Invalid value for '--jobs'"),
    (["warm", "--jac-chunk-size", "-3"], 2, "must be a positive int or 'auto'"),
    (["warm", "--entry", "no colon"], 2, "must look like 'package.module:function'"),
    (["warm", "--entry", "a:b:c"], 2, "must look like 'package.module:function'"),
    (["warm", "--plan", "MISSING"], 2, "does not exist"),
    (["warm", "--plan", "CACHE"], 2, "is a folder"),
    (["warm", "--plan", "PLAN:broken.toml"], 2, "invalid TOML"),
    (["warm", "--plan", "PLAN:binary.toml"], 2, "binary.toml"),  # not UTF-8: an error about the plan, not a crash
    (["warm", "--plan", "PLAN:unknown-key.toml"], 2, "unknown key 'problem'"),
    (["warm", "--plan", "PLAN:wrong-type.toml"], 2, "sizes must be a list"),
    (["warm", "--plan", "PLAN:negative.toml"], 2, "size -1 must be a positive integer"),
    (["warm", "--plan", "PLAN:bad-target.toml"], 2, "unknown key 'bogus'"),
    (["warm", "--plan", "PLAN:unknown-key.toml", "--x64"], 2, "unknown key 'problem'"),
    # Entry mistakes are usage errors, found before any worker starts (jaxcache/warming/preflight.py).
    (["warm", "--entry", "nosuchmodule_xyz:fn"], 2, "--entry nosuchmodule_xyz:fn: ModuleNotFoundError"),
    (["warm", "--entry", "userkernels:missing"], 2, "has no attribute 'missing'"),
    (["warm", "--entry", "userkernels:not_a_list"], 2, "returned int, not a list"),
    (["warm", "--entry", "userkernels:raises"], 2, "RuntimeError: boom in user code"),
    (["warm", "--entry", "userkernels:wrong_items"], 2, "give (name, function, args"),
    (["--cache-dir", "MISSING", "inspect"], 1, "no cache folder at"),
    (["--cache-dir", "MISSING", "check", "--repair"], 1, "no cache folder at"),
    (["--cache-dir", "FILE", "inspect"], 1, "is a file, not a folder"),
    (["--cache-dir", "FILE", "prune", "--stale", "--yes"], 1, "is a file, not a folder"),
    (["--cache-dir", "FILE", "warm", "--problem", "rosenbrock", "--size", "4"], 1, "is a file, not a folder"),
    (["--cache-dir", "FILE", "hook"], 1, "is a file, not a folder"),
    (["--cache-dir", "FILE", "stats"], 1, "is a file, not a folder"),
    (["--cache-dir", "HOME", "clear", "--yes"], 1, "does not look like a JAX compilation cache"),
    (["--cache-dir", "HOME", "prune", "--max-size", "0", "--yes"], 1, "does not look like a JAX compilation cache"),
    (["--cache-dir", "HOME", "check", "--repair"], 1, "does not look like a JAX compilation cache"),
    (["--cache-dir", "", "clear", "--yes"], 2, "cache"),  # an unset "$VAR": never the current folder
    (["--cache-dir", "x" * 300, "inspect"], 1, "File name too long"),
]

ENV_CASES = [  # (environment, args, code, message): bad settings are usage errors for every command
    ({"JAXCACHE_MAX_SIZE": "lots"}, ["config"], 2, "invalid size 'lots'"),
    ({"JAXCACHE_LAYOUT": "sideways"}, ["inspect"], 2, "invalid value 'sideways' for layout"),
]

PLANS = {
    "broken.toml": b"problems = [\n",
    "binary.toml": b"\xff\xfe\x00problems",
    "unknown-key.toml": b"problem = 'bratu'\n",
    "wrong-type.toml": b"sizes = 'big'\n",
    "negative.toml": b"problems = ['bratu']\nsizes = [-1]\n",
    "bad-target.toml": b"targets = [{problem = 'bratu', bogus = 1}]\n",
}


def _substitute(arg: str, paths: dict[str, Path]) -> str:
    if arg.startswith("PLAN:"):
        return str(paths["plans"] / arg[5:])
    return str(paths[arg]) if arg in paths else arg


@pytest.fixture
def bad_input_world(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    (tmp_path / "afile").write_text("not a folder")
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("\\documentclass{article}")
    plans = tmp_path / "plans"
    plans.mkdir()
    for name, data in PLANS.items():
        (plans / name).write_bytes(data)
    (tmp_path / "userkernels.py").write_text(textwrap.dedent(USER_KERNELS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return {"CACHE": cache, "FILE": tmp_path / "afile", "HOME": home, "MISSING": tmp_path / "missing",
            "plans": plans, "work": work}


def _assert_rejected(result: Result, code: int, message: str, what: object) -> None:
    assert result.exit_code == code, (what, result.exit_code, result.output)
    assert "Traceback" not in result.output, (what, result.output)
    if code == 1 and result.stderr.strip() == "":  # warm: a failed kernel is a row with its reason
        assert message in result.stdout, (what, result.stdout)
    else:
        assert message in result.stderr, (what, result.stderr)
        assert one_line(result.stderr), (what, result.stderr)


def test_bad_input_table_is_large_enough() -> None:
    assert len(BAD_INPUT) + len(ENV_CASES) >= 20
    commands = {next(a for a in args if a in main.commands or a == "frobnicate") for args, _, _ in BAD_INPUT
                if any(a in main.commands or a == "frobnicate" for a in args)}
    assert {"inspect", "ls", "prune", "clear", "check", "warm", "verify", "run", "stats", "hook"} <= commands


@pytest.mark.parametrize("args, code, message", BAD_INPUT, ids=[" ".join(a)[:60] for a, _, _ in BAD_INPUT])
def test_bad_input(bad_input_world: dict[str, Path], args: list[str], code: int, message: str) -> None:
    paths = bad_input_world
    cache = paths["CACHE"]
    args = [_substitute(a, paths) for a in args]
    if args[0] != "--cache-dir":
        args = ["--cache-dir", str(cache), *args]
    watched = [cache, paths["HOME"], paths["FILE"].parent / "afile"]
    before = {str(p): snapshot(p) if p.is_dir() else p.read_bytes() for p in watched}
    result = jc(*args)
    _assert_rejected(result, code, message, args)
    assert {str(p): snapshot(p) if p.is_dir() else p.read_bytes() for p in watched} == before
    assert not paths["MISSING"].exists()
    assert list(paths["work"].iterdir()) == []


@pytest.mark.parametrize("env, args, code, message", ENV_CASES, ids=[c[1][0] for c in ENV_CASES])
def test_bad_settings(bad_input_world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                      args: list[str], code: int, message: str) -> None:
    cache = bad_input_world["CACHE"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = snapshot(cache)
    _assert_rejected(jc("--cache-dir", str(cache), *args), code, message, (env, args))
    assert snapshot(cache) == before


@pytest.mark.parametrize("content", [b"[tool.jaxcache\n", b"\xff[tool.jaxcache]\n", b"[tool.jaxcache]\nmax_size = 'lots'\n",
                                     b"[tool.jaxcache]\ncache = 'x'\n"],
                         ids=["invalid-toml", "not-utf8", "bad-size", "unknown-key"])
def test_a_broken_pyproject_is_skipped_with_one_warning(bad_input_world: dict[str, Path], content: bytes) -> None:
    """A pyproject.toml jaxcache cannot use (any project's, mid-edit, or a typo) does not stop commands."""
    cache = bad_input_world["CACHE"]
    (bad_input_world["work"] / "pyproject.toml").write_bytes(content)
    before = snapshot(cache)
    for args in (["--cache-dir", str(cache), "dir"], ["--cache-dir", str(cache), "inspect"]):
        result = jc(*args)
        assert result.exit_code == 0, (args, result.output)
        warning = [line for line in result.stderr.splitlines() if line.startswith("jaxcache: warning:")]
        assert len(warning) == 1 and "pyproject.toml" in warning[0], result.stderr
    assert snapshot(cache) == before


REFUSE_FLOCK = r"""
import errno, fcntl, sys
real_flock = fcntl.flock
def refuse(fd, operation):
    if operation & (fcntl.LOCK_EX | fcntl.LOCK_SH):
        raise OSError(errno.ENOLCK, "No locks available")
    return real_flock(fd, operation)
fcntl.flock = refuse
sys.argv = ["jaxcache", *ARGS]
from jaxcache.launcher import main
main()
"""


def test_a_filesystem_without_locks_is_changed_without_them(cache: Path) -> None:
    """flock refused as an NFS mount without its lock manager refuses it (ENOLCK).

    This kernel has no NFS client, so the refusal is injected into the jaxcache
    process alone (every flock call fails, as on such a mount); the folder and JAX
    are real. JAX takes no lock in an uncapped cache, so jaxcache goes on without
    one, says so once, and still proves each file before it goes.
    """
    folder = version_folder(cache)
    before = {p.name for p in folder.glob("*-cache")}
    step = {n for n in before if n.startswith("jit_step-")}
    assert step and step != before

    def jaxcache_without_locks(*args: str) -> subprocess.CompletedProcess[str]:
        return run_python(REFUSE_FLOCK.replace("ARGS", repr(["--cache-dir", str(cache), *args])), check=False)

    pruned = jaxcache_without_locks("prune", "--name", "jit_step*", "--yes")
    assert pruned.returncode == 0, pruned.stderr
    warnings = [line for line in pruned.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "cannot be locked (No locks available" in warnings[0], pruned.stderr
    assert "Traceback" not in pruned.stderr
    assert {p.name for p in folder.glob("*-cache")} == before - step
    (folder / ("jit_gone-" + "d" * 64 + "-atime")).write_bytes(jaxformat.encode_atime(time.time_ns()))
    repaired = jaxcache_without_locks("check", "--repair", "--yes")
    assert repaired.returncode == 0, repaired.stderr
    assert not (folder / ("jit_gone-" + "d" * 64 + "-atime")).exists()
    events = run_compile(env_with(JAXCACHE_DIR=str(cache)))  # a fresh JAX process: only jit_step compiles
    assert set(events["misses"]) == {"jit_step"} and "jit_cost" in events["hits"]
