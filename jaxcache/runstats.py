"""``jaxcache run``: run any command with the cache configured, and count what it hit.

The child gets the cache through the environment (JAX reads ``JAX_*`` config
variables at import), so it need not import jaxcache. A ``sitecustomize`` on
``PYTHONPATH`` (see ``jaxcache/_bootstrap``) taps JAX's log records in every
Python process of the child and appends per-module counts to a file; the
parent sums them, reports them, and adds them to the cumulative figures kept
in ``<root>/.jaxcache/stats.json`` (``jaxcache stats``; ``--zero`` resets).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import filelock

from jaxcache import atomic, jaxformat, provenance
from jaxcache.compilelog import CompileLog, ModuleCounts
from jaxcache.configuration import cache_env, prepare_folder
from jaxcache.errors import CacheDirError, CommandError, JaxCacheError, UsageError
from jaxcache.index import META_DIR_NAME
from jaxcache.settings import Settings

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"
STATS_NAME = "stats.json"
_COUNTERS = ("requests", "hits", "misses", "writes", "compile_seconds", "saved_seconds")


@dataclass
class Totals(ModuleCounts):
    """A module's (or a run's) counts, plus the compile seconds its hits saved."""

    saved_seconds: float = 0.0

    def add(self, other: Totals) -> None:
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RunReport:
    """What one ``jaxcache run`` saw."""

    command: list[str]
    exit_code: int
    seconds: float
    processes: int
    totals: Totals
    modules: dict[str, Totals] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # about the folder (others can write to it)
    run_id: str | None = None  # its misses' record (`jaxcache explain --run RUN_ID`)
    why: list[Any] = field(default_factory=list)  # each miss explained (jaxcache.explain.Explanation)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "processes": self.processes,
            **_rounded(asdict(self.totals)),
            "modules": {m: _rounded(asdict(t)) for m, t in sorted(self.modules.items())},
            "warnings": self.warnings,
            "run": self.run_id,
            "why": [e.as_dict() for e in self.why],
        }


def _rounded(counts: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in counts.items()}


def _saved_seconds(root: Path, hit_keys: list[str]) -> dict[str, float]:
    """Compile seconds each hit key saved: measured at write time when jaxcache was
    there, else the whole seconds in the entry's header."""
    out: dict[str, float] = {}
    folders = [root, *[p for p in root.iterdir() if p.is_dir() and provenance.read_marker(p)]] if root.is_dir() else []
    measured: dict[str, float] = {}
    for folder in folders:
        measured.update({k: w.compile_seconds for k, w in provenance.load_writes(folder).items()
                         if w.compile_seconds is not None})
    for key in set(hit_keys):
        if key in measured:
            out[key] = measured[key]
            continue
        stored = _stored_compile_seconds(folders, key)
        if stored is not None:
            out[key] = stored
            continue
        for folder in folders:
            try:
                seconds = jaxformat.read_compile_seconds(folder / jaxformat.cache_file_name(key))
            except (OSError, jaxformat.EntryFormatError):
                continue
            out[key] = float(seconds or 0)
            break
    return out


def _stored_compile_seconds(folders: list[Path], key: str) -> float | None:
    """The compile seconds in the header of an executable-store hit (``<module>-<sha256>``)."""
    from jaxcache import exeformat

    name = key[-64:] + exeformat.SUFFIX
    if not exeformat.is_store_name(name):
        return None
    for folder in folders:
        try:
            return float(exeformat.read_header(folder / exeformat.FOLDER_NAME / name).get("compile_seconds", 0.0))
        except (OSError, exeformat.ExecutableFormatError, TypeError, ValueError):
            continue
    return None


def run(command: Sequence[str], settings: Settings, *, env: Mapping[str, str] | None = None) -> RunReport:
    """Runs a command with the cache configured; returns its exit code and cache traffic.

    Raises:
        UsageError: no command given.
        CommandError: the command cannot be started (exit code 127 or 126, as in a shell).
    """
    if not command:
        raise UsageError("no command to run: jaxcache run -- CMD [ARGS...]")
    jax_dir, _ = prepare_folder(settings)  # refuses a folder that is not a cache
    from jaxcache.security import cache_problems

    problems = cache_problems(settings.root, jax_dir)
    if problems and settings.strict.value:
        raise CacheDirError(f"refusing an unsafe cache folder (strict mode): {problems[0]}")
    child_env = dict(os.environ if env is None else env)
    child_env.update(cache_env(settings, jax_dir))
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BOOTSTRAP_DIR), child_env.get("PYTHONPATH")]))
    from jaxcache import keyparts

    run_id = child_env[keyparts.RUN_ID_ENV] = keyparts.new_run_id()  # every process of the command: one run
    try:
        keyparts.start_run(settings.root, run_id, list(command))
    except OSError:
        pass  # a record is metadata: the command runs anyway
    with tempfile.TemporaryDirectory(prefix="jaxcache-run-") as tmp:
        stats_file = Path(tmp) / "stats.jsonl"
        child_env["JAXCACHE_RUN_STATS"] = str(stats_file)
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(list(command), env=child_env)
        except FileNotFoundError:
            raise CommandError(f"command not found: {command[0]}", exit_code=127) from None
        except PermissionError:
            raise CommandError(f"permission denied: cannot run {command[0]}", exit_code=126) from None
        with _forwarding_signals(proc):
            while True:
                try:
                    code = proc.wait()
                    break
                except KeyboardInterrupt:
                    continue  # the child got the same SIGINT (see _forwarding_signals); wait for it
        seconds = time.perf_counter() - start
        lines = stats_file.read_text().splitlines() if stats_file.exists() else []
    if code < 0:
        code = 128 - code  # killed by a signal: the code a shell gives (SIGTERM: 143, SIGKILL: 137)
    logs = _replay(lines)
    modules: dict[str, Totals] = {}
    hit_keys: list[str] = []
    for log in logs.values():
        hit_keys.extend(log.hit_keys)
        for module, counts in log.snapshot().items():  # a write counts once its entry is on disk
            t = modules.setdefault(module, Totals())
            t.add(Totals(**{k: counts.get(k, 0) for k in _COUNTERS if k != "saved_seconds"}))
    saved = _saved_seconds(settings.root, hit_keys)
    for key in hit_keys:
        module = key[:-65]
        if module in modules:
            modules[module].saved_seconds += saved.get(key, 0.0)
    totals = Totals()
    for t in modules.values():
        totals.add(t)
    report = RunReport(command=list(command), exit_code=code, seconds=seconds, processes=len(logs),
                       totals=totals, modules=modules, warnings=problems, run_id=run_id,
                       why=_why(settings.root, run_id) if totals.misses else [])
    record_run(settings.root, report)
    return report


# Signals a job's supervisor sends to `jaxcache run` alone (docker stop, kill PID, a batch
# system's time limit) that must reach the command, which decides how to end.
_FORWARDED = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


@contextmanager
def _forwarding_signals(proc: subprocess.Popen[Any]) -> Iterator[None]:
    """Passes signals sent to this process on to the command while it runs.

    SIGINT too, except when this process is in its terminal's foreground
    process group: Ctrl-C there already reached the command (which shares the
    group), and a second one would interrupt its clean-up.
    """
    import signal

    def forward(signum: int, frame: Any) -> None:
        try:
            proc.send_signal(signum)
        except OSError:
            pass  # it ended meanwhile

    names = list(_FORWARDED) + ([] if _terminal_sends_sigint() else ["SIGINT"])
    previous = {}
    for name in names:
        number = getattr(signal, name, None)
        if number is not None:
            try:
                previous[number] = signal.signal(number, forward)
            except (ValueError, OSError):  # not the main thread, or not catchable here
                pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _terminal_sends_sigint() -> bool:
    """Whether a Ctrl-C reaches the command by itself: we run in the foreground of a terminal."""
    for stream in (sys.stdin, sys.stderr):
        try:
            if stream is not None and stream.isatty() and os.tcgetpgrp(stream.fileno()) == os.getpgrp():
                return True
        except (OSError, ValueError):
            continue
    return False


def _why(root: Path, run_id: str) -> list[Any]:
    """This run's misses, explained (nothing if none were recorded, e.g. JAX changed its records)."""
    from jaxcache.errors import UsageError
    from jaxcache.explain import explain_run

    try:
        return list(explain_run(root, run_id).explanations)
    except (UsageError, OSError):
        return []


def _replay(lines: list[str]) -> dict[int, CompileLog]:
    """Each child process's events (one JSON line each, from the bootstrap) as its `CompileLog`."""
    logs: dict[int, CompileLog] = {}
    for line in lines:
        try:
            record = json.loads(line)
            pid, kind, module, value = record["pid"], record["event"], record["module"], record["value"]
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill
        log = logs.setdefault(pid, CompileLog())
        if record.get("folder"):
            log.folder = record["folder"]
        log.observe(kind, module, value, at=record.get("time"))
    return logs


def _stats_path(root: Path) -> Path:
    return root / META_DIR_NAME / STATS_NAME


def record_run(root: Path, report: RunReport) -> None:
    """Adds a run to the cumulative figures, under a lock (runs may end together)."""
    path = _stats_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(path) + ".lock", timeout=30):
            data = load_stats(root)
            data["runs"] += 1
            data["since"] = data["since"] or time.time()
            for name in _COUNTERS:
                data[name] += getattr(report.totals, name)
            _write_json(path, data)
    except (OSError, filelock.Timeout):
        pass  # figures are best effort; the run itself succeeded


def load_stats(root: Path) -> dict[str, Any]:
    """The cumulative figures (zeros if none were recorded).

    Raises:
        CacheDirError: there is no folder at ``root``, or it is a file.
    """
    if not root.exists():
        raise CacheDirError(f"no cache folder at {root}")
    if not root.is_dir():
        raise CacheDirError(f"{root} is a file, not a folder")
    data: dict[str, Any] = {"runs": 0, **{name: 0 for name in _COUNTERS}, "since": None}
    try:
        stored = json.loads(_stats_path(root).read_text())
        data.update({k: stored[k] for k in data if k in stored})
    except (OSError, ValueError, TypeError):
        pass
    return data


def zero_stats(root: Path) -> None:
    """Resets the cumulative figures.

    Raises:
        JaxCacheError: the figures cannot be written.
    """
    path = _stats_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(path) + ".lock", timeout=30):
            _write_json(path, {"runs": 0, **{name: 0 for name in _COUNTERS}, "since": time.time()})
    except OSError as e:
        raise JaxCacheError(f"cannot reset the statistics in {path.parent}: {e.strerror}") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic.write_atomically(path, (json.dumps(data, indent=1) + "\n").encode())
