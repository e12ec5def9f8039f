"""Concurrency: real JAX writers, a `jaxcache prune` loop and readers, all on one cache at once.

Four fresh JAX processes compile distinct programs into one cache while
`jaxcache prune --max-size` runs in a loop and `jaxcache inspect` / `check`
read it. Afterwards the folder must be consistent (every `-cache` has its
`-atime` in a capped cache and none in an uncapped one, no orphan, no
partial or temporary file, `check` clean) and every remaining entry must be
hit by a fresh process that re-runs the same programs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


from jaxcache import jaxformat
from jaxcache_testing import env_with, version_folder

# One writer: configures the cache through jaxcache (capped or not), jits N distinct
# small programs per writer id and reports JAX's persistent-cache hits and misses,
# per (module, key), from the "jax._src.compiler" DEBUG records.
WRITER_PROGRAM = r"""
import json, logging, sys, time
root, cap, n, wids = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(w) for w in sys.argv[4].split(",")]
events = {"hits": [], "misses": [], "evicted": 0}
class Counter(logging.Handler):
    def emit(self, record):
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Evicting cache entry"):
            events["evicted"] += 1
        elif msg.startswith("Persistent compilation cache hit"):
            events["hits"].append(list(record.args))
        elif msg.startswith("PERSISTENT COMPILATION CACHE MISS"):
            events["misses"].append(list(record.args))
log = logging.getLogger("jax._src.compiler")
log.setLevel(logging.DEBUG)
log.addHandler(Counter())
log.propagate = False
evictions = logging.getLogger("jax._src.lru_cache")
evictions.setLevel(logging.DEBUG)
evictions.addHandler(Counter())
evictions.propagate = False
import jaxcache
jaxcache.configure(root, max_size=None if cap == "none" else int(cap))
import jax, jax.numpy as jnp, numpy as np

def program(w, i):
    c = float(w * 1000 + i + 1)
    def f(x):
        y = jnp.sin(x * c)
        for k in range(1 + i % 3):
            y = jnp.tanh((y @ x.T) @ x + k * c)
        return jnp.sum(y) + c
    f.__name__ = f"w{w}_f{i}"
    return jax.jit(f), np.ones((4 + i, 3 + w), np.float32)

t0 = time.perf_counter()
for w in wids:
    for i in range(n):
        fn, x = program(w, i)
        fn(x).block_until_ready()
events["seconds"] = time.perf_counter() - t0
print("EVENTS" + json.dumps(events))
"""

JAX_CACHE_ERRORS = ("Error reading persistent compilation cache entry", "Error writing persistent compilation cache entry")
WRITERS = 4
PROGRAMS = 12  # per writer; each entry is about 5-6 KB


def writer_script(tmp_path: Path) -> Path:
    path = tmp_path / "writer.py"
    path.write_text(WRITER_PROGRAM)
    return path


def parse_events(stdout: str) -> dict:
    line = next(l for l in stdout.splitlines() if l.startswith("EVENTS"))
    return json.loads(line[len("EVENTS"):])


def jaxcache_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "jaxcache", "--cache-dir", str(root), *args]


@dataclass
class Loop:
    """A command run over and over in a thread until stopped; every result kept."""

    commands: list[list[str]]
    env: dict[str, str]
    results: list[tuple[list[str], int, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            cmd = self.commands[i % len(self.commands)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=120)
            self.results.append((cmd, proc.returncode, proc.stdout, proc.stderr))
            i += 1


@dataclass
class Outcome:
    root: Path
    folder: Path
    writers: list[subprocess.CompletedProcess]
    events: list[dict]
    pruner: Loop
    reader: Loop
    seconds: float


def run_concurrently(tmp_path: Path, *, cap: int | None, prune_to: int) -> Outcome:
    """4 writers + a prune loop + an inspect/check loop on one cache root."""
    root = tmp_path / "cache"
    script = writer_script(tmp_path)
    env = env_with()
    if cap is not None:
        env["JAXCACHE_MAX_SIZE"] = str(cap)  # so `check` knows every entry needs its -atime
    # The folder exists before anyone starts (as after a first `jaxcache hook`).
    subprocess.run(jaxcache_cmd(root, "hook"), check=True, capture_output=True, env=env)
    pruner = Loop([jaxcache_cmd(root, "prune", "--max-size", str(prune_to), "--yes", "--json")], env)
    reader = Loop([jaxcache_cmd(root, "inspect", "--json"), jaxcache_cmd(root, "check", "--json"),
                   jaxcache_cmd(root, "ls", "--json")], env)
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in (pruner, reader)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    procs = [subprocess.Popen([sys.executable, str(script), str(root), "none" if cap is None else str(cap),
                               str(PROGRAMS), str(w)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for w in range(WRITERS)]
    writers = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        writers.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    seconds = time.perf_counter() - start
    for loop in (pruner, reader):
        loop.stop.set()
    for t in threads:
        t.join(timeout=120)
    assert all(w.returncode == 0 for w in writers), [w.stderr[-2000:] for w in writers if w.returncode]
    return Outcome(root=root, folder=version_folder(root), writers=writers,
                   events=[parse_events(w.stdout) for w in writers], pruner=pruner, reader=reader, seconds=seconds)


def assert_jaxcache_commands_behaved(outcome: Outcome) -> None:
    """Every prune exited 0 and every reader 0 (check: 0, or 1 with findings); never a traceback."""
    assert len(outcome.pruner.results) >= 2, "the prune loop hardly ran"
    assert len(outcome.reader.results) >= 2, "the reader loop hardly ran"
    for cmd, code, out, err in outcome.pruner.results + outcome.reader.results:
        assert "Traceback" not in err, (cmd, err)
        if "check" in cmd:
            assert code in (0, 1), (cmd, code, err)
            json.loads(out)
        else:
            assert code == 0, (cmd, code, err)
            json.loads(out)


def concurrent_check_findings(outcome: Outcome) -> list[dict]:
    """What `check` reported while everything ran (informational: files may be mid-eviction)."""
    found = []
    for cmd, code, out, _ in outcome.reader.results:
        if "check" in cmd:
            found.extend(f for f in json.loads(out)["findings"])
    return found


def age_everything(folder: Path, seconds: float = 60) -> None:
    """`check` skips files younger than 10 s (maybe mid-write): make every file old enough to be checked."""
    past = time.time() - seconds
    for path in folder.iterdir():
        if path.is_file():
            os.utime(path, (past, past))


def assert_consistent(outcome: Outcome, *, capped: bool, env: dict[str, str]) -> set[str]:
    """The folder after the run: pairs complete, no orphan, no partial or temporary file, check clean."""
    folder = outcome.folder
    caches, atimes, temps = set(), set(), []
    for path in folder.iterdir():
        parsed = jaxformat.parse_entry_name(path.name)
        if parsed is not None:
            (caches if parsed.kind == "cache" else atimes).add(parsed.key)
        elif path.name.startswith(".jaxcache-tmp-"):
            temps.append(path.name)
    assert not temps, f"temporary files left behind: {temps}"
    if capped:
        assert caches - atimes == set(), "a -cache without its -atime"
        assert atimes - caches == set(), "an orphan -atime"
    else:
        assert atimes == set(), "an uncapped cache has no -atime files"
    for key in caches:  # no partial file: every entry decompresses to a header plus an executable
        jaxformat.decompress_entry((folder / jaxformat.cache_file_name(key)).read_bytes())
    written = {key for e in outcome.events for _, key in e["misses"]}
    assert caches <= written, f"entries nobody wrote: {caches - written}"
    age_everything(folder)
    proc = subprocess.run(jaxcache_cmd(outcome.root, "check", "--json"), capture_output=True, text=True, env=env)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"] is True, report["findings"]
    assert report["entries_checked"] == len(caches)
    return caches


def assert_remaining_entries_hit(outcome: Outcome, remaining: set[str], *, cap: int | None, env: dict[str, str]) -> dict:
    """A fresh process re-running every writer's programs hits every entry still on disk."""
    script = outcome.root.parent / "writer.py"
    verify_cap = "none" if cap is None else str(10**9)  # capped like the writers, but never evicting
    proc = subprocess.run([sys.executable, str(script), str(outcome.root), verify_cap, str(PROGRAMS),
                           ",".join(str(w) for w in range(WRITERS))], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = parse_events(proc.stdout)
    hits = {key for _, key in events["hits"]}
    assert remaining <= hits, f"entries on disk that a fresh process did not hit: {sorted(remaining - hits)}"
    assert not any(e in proc.stderr for e in JAX_CACHE_ERRORS), proc.stderr[-3000:]
    assert len(events["hits"]) + len(events["misses"]) == WRITERS * PROGRAMS
    return events


@pytest.mark.slow
def test_capped_cache_with_prune_loop_and_readers(tmp_path: Path) -> None:
    """JAX's own LRU (max_size) and `jaxcache prune --max-size` both evict while 4 processes write."""
    entry = 5_500  # about one entry's size
    cap = 12 * entry  # JAX evicts: the writers produce 48 entries
    prune_to = 8 * entry
    outcome = run_concurrently(tmp_path, cap=cap, prune_to=prune_to)
    env = env_with(JAXCACHE_MAX_SIZE=str(cap))
    assert_jaxcache_commands_behaved(outcome)
    written = {key for e in outcome.events for _, key in e["misses"]}
    assert len(written) == WRITERS * PROGRAMS  # distinct programs: every first compile is a miss
    deleted_by_prune = {k for _, code, out, _ in outcome.pruner.results for k in json.loads(out)["deleted"]}
    remaining = assert_consistent(outcome, capped=True, env=env)
    assert remaining, "nothing left to load"
    evicted_by_jax = sum(e["evicted"] for e in outcome.events)
    assert evicted_by_jax > 0, "JAX never evicted: the cap is too large to test its eviction"
    assert deleted_by_prune, "the prune loop never deleted anything while JAX wrote"
    assert sum((outcome.folder / jaxformat.cache_file_name(k)).stat().st_size for k in remaining) <= cap
    assert_remaining_entries_hit(outcome, remaining, cap=cap, env=env)
    # JAX's lock serializes its get/put with jaxcache's deletions: no writer saw an error.
    errors = [line for w in outcome.writers for line in w.stderr.splitlines() if any(e in line for e in JAX_CACHE_ERRORS)]
    print(f"capped: {outcome.seconds:.1f}s, JAX evicted {evicted_by_jax}, {len(outcome.pruner.results)} prunes deleting {len(deleted_by_prune)} "
          f"entries, {len(outcome.reader.results)} reads, {len(remaining)} left; concurrent check findings: "
          f"{sorted({f['kind'] for f in concurrent_check_findings(outcome)})}; writer cache errors: {errors}")
    assert errors == []


@pytest.mark.slow
def test_uncapped_atomic_cache_with_prune_loop_and_readers(tmp_path: Path) -> None:
    """No size cap: JAX takes no lock and writes no -atime; jaxcache.configure makes its writes atomic."""
    entry = 5_500
    prune_to = 18 * entry
    outcome = run_concurrently(tmp_path, cap=None, prune_to=prune_to)
    env = env_with()
    assert_jaxcache_commands_behaved(outcome)
    written = {key for e in outcome.events for _, key in e["misses"]}
    assert len(written) == WRITERS * PROGRAMS
    deleted_by_prune = {k for _, code, out, _ in outcome.pruner.results for k in json.loads(out)["deleted"]}
    assert deleted_by_prune, "the prune loop never deleted anything while JAX wrote"
    remaining = assert_consistent(outcome, capped=False, env=env)
    assert remaining
    assert_remaining_entries_hit(outcome, remaining, cap=None, env=env)
    for w in outcome.writers:
        assert not any(e in w.stderr for e in JAX_CACHE_ERRORS), w.stderr[-3000:]
        assert "Traceback" not in w.stderr
    assert concurrent_check_findings(outcome) == [], "check reported problems in a healthy cache while JAX wrote"


# --- A writer SIGKILLed mid-write in a capped cache ------------------------------------------
# The writer kills itself (SIGKILL, nothing runs after it) at an exact point of its write of
# `victim`, found by an audit hook on the file operations that write it: no timing involved.
KILLED_WRITER = r"""
import os, signal, sys
root, kill_at, atomic = sys.argv[1], sys.argv[2], sys.argv[3] == "atomic"
import jaxcache
jaxcache.configure(root, max_size=10**8, atomic_writes=atomic)
import jax, jax.numpy as jnp

def program(c):
    def f(x):
        return jnp.tanh(x @ x.T * c).sum()
    f.__name__ = f"prog{int(c)}"
    return jax.jit(f)

x = jnp.ones((5, 4))
for c in (1.0, 2.0):
    program(c)(x).block_until_ready()
armed, temps = [False], []

def at(event, args):
    if not armed[0] or event not in ("open", "os.rename"):
        return
    name, target = os.path.basename(str(args[0])), str(args[1])
    if event == "open" and name.startswith(".jaxcache-tmp-"):
        temps.append(name)
    # Audit events come before the operation: "creating" kills before the file exists.
    hit = {"creating the entry's temp file": event == "open" and len(temps) == 1,
           "creating the -atime's temp file": event == "open" and len(temps) == 2,
           "renaming the -atime": event == "os.rename" and target.endswith("-atime"),
           "renaming the entry": event == "os.rename" and target.endswith("-cache"),
           # JAX's own put: its -cache written, its -atime about to be
           "plain atime written": event == "open" and name.endswith("-atime") and "w" in str(target)}[kill_at]
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(at)
armed[0] = True
program(3.0)(x).block_until_ready()
print("NOT KILLED")
"""

# Another writer afterwards: new programs (and the victim) must all be saved, JAX reporting no error.
NEXT_WRITER = r"""
import json, sys, warnings
warnings.simplefilter("always")
import jaxcache
jaxcache.configure(sys.argv[1], max_size=10**8)
import jax, jax.numpy as jnp
from jaxcache.compilelog import CompileLog
log = CompileLog().start()

def program(c):
    def f(x):
        return jnp.tanh(x @ x.T * c).sum()
    f.__name__ = f"prog{int(c)}"
    return jax.jit(f)

x = jnp.ones((5, 4))
with warnings.catch_warnings(record=True) as caught:
    for c in (1.0, 2.0, 3.0, 4.0, 5.0):
        program(c)(x).block_until_ready()
print(json.dumps({"modules": log.snapshot(), "warnings": [str(w.message) for w in caught]}))
"""


KILL_POINTS = {  # where the writer dies -> how many of its temporary files are left
    "creating the entry's temp file": 0,
    "creating the -atime's temp file": 1,  # the entry's, whole but never renamed
    "renaming the -atime": 2,
    "renaming the entry": 1,  # its -atime is in place already: an orphan JAX ignores
}


@pytest.mark.parametrize("kill_at", list(KILL_POINTS))
def test_a_writer_killed_mid_write_in_a_capped_cache_leaves_nothing_half_written(tmp_path: Path, kill_at: str) -> None:
    from jaxcache.atomic import writer_is_gone
    from jaxcache.integrity import check
    from jaxcache.scanning import scan

    root = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root), kill_at, "atomic"],
                            capture_output=True, text=True, env=env_with(), timeout=300)
    assert killed.returncode == -9 and "NOT KILLED" not in killed.stdout, killed.stderr[-3000:]
    folder = version_folder(root)
    entries = {p.name for p in folder.iterdir() if jaxformat.parse_entry_name(p.name)}
    temps = [p for p in folder.iterdir() if p.name.startswith(".jaxcache-tmp-")]
    # Nothing of the victim's entry is in place, except (killed between the renames) its -atime,
    # which JAX ignores; the two entries written before are whole, each with its -atime.
    victim = {n for n in entries if n.startswith("jit_prog3-")}
    others = entries - victim
    assert victim == ({n for n in victim if n.endswith("-atime")} if kill_at == "renaming the entry" else set())
    assert len(victim) == (1 if kill_at == "renaming the entry" else 0)
    pairs = {n.rsplit("-", 1)[0] for n in others}
    assert {"jit_prog1", "jit_prog2"} <= {p.rsplit("-", 1)[0] for p in pairs}
    assert others == {f"{p}-{kind}" for p in pairs for kind in ("cache", "atime")}
    for pair in pairs:
        jaxformat.decompress_entry((folder / f"{pair}-cache").read_bytes())
    # Its temporary files are provably its own and orphaned: no need to wait for them to age.
    assert len(temps) == KILL_POINTS[kill_at]
    assert all(writer_is_gone(p) for p in temps)
    report = check(scan(root))
    assert not [f for f in report.findings if f.kind in ("corrupt", "missing-atime")], report.findings

    after = subprocess.run([sys.executable, "-c", NEXT_WRITER, str(root)], capture_output=True, text=True,
                           env=env_with(), timeout=300)
    assert after.returncode == 0, after.stderr[-3000:]
    out = json.loads(after.stdout.strip().splitlines()[-1])
    assert not [w for w in out["warnings"] if any(e in w for e in JAX_CACHE_ERRORS)], out["warnings"]
    modules = out["modules"]
    assert all(modules[f"jit_prog{c}"]["hits"] == 1 for c in (1, 2)), modules
    assert all(modules[f"jit_prog{c}"]["writes"] == 1 for c in (3, 4, 5)), modules
    assert all(e.has_atime for e in scan(root).entries)


PLAIN_NEXT_WRITER = NEXT_WRITER.replace("""import jaxcache
jaxcache.configure(sys.argv[1], max_size=10**8)
import jax, jax.numpy as jnp""", """import os
import jax, jax.numpy as jnp
folder = [os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1]) if n.startswith("jaxlib-")][0]
for name, value in [("jax_compilation_cache_dir", folder), ("jax_compilation_cache_max_size", 10**8),
                    ("jax_persistent_cache_min_compile_time_secs", 0)]:
    jax.config.update(name, value)""")


def test_the_control_a_plain_jax_writer_killed_between_entry_and_atime_breaks_capped_writes_before_0_11_2(
        tmp_path: Path) -> None:
    """Without jaxcache's atomic writes the same kind of kill leaves a -cache without its
    -atime, and then (jax#39880, fixed in jaxlib 0.11.2) every capped write of a process set
    up by hand fails: what the test above proves cannot happen to a configured writer."""
    from jaxcache.provenance import installed_versions

    root = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root), "plain atime written", "plain"],
                            capture_output=True, text=True, env=env_with(), timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    folder = version_folder(root)
    assert len(list(folder.glob("jit_prog3-*-cache"))) == 1 and not list(folder.glob("jit_prog3-*-atime"))
    after = subprocess.run([sys.executable, "-c", PLAIN_NEXT_WRITER, str(root)], capture_output=True, text=True,
                           env=env_with(), timeout=300)
    assert after.returncode == 0, after.stderr[-3000:]
    failed = [w for w in json.loads(after.stdout.strip().splitlines()[-1])["warnings"]
              if "Error writing persistent compilation cache entry" in w]
    if jaxformat.missing_atime_breaks_writes(installed_versions().jaxlib):
        assert failed and all("FileNotFoundError" in w and "jit_prog3-" in w for w in failed), failed
    else:
        assert failed == []
