"""Running a warm plan: worker processes configured like the runs they prepare."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jaxcache.warming.plan import Target, WarmPlan
from jaxcache.warming.preflight import Preflight, preflight

# Workers import the installed jaxcache and solver, never a folder of the same name in
# the current directory (python -m puts it first on sys.path); an --entry module
# there is still found, since the worker appends the directory at the end.
SAFE_PATH = ("-P",)


def child_command(module: str, function: str) -> list[str]:
    """The command line of a warm helper process: ``module.function()``, its return the exit code.

    Not ``python -m module``: the package imports its own modules first, so ``-m``
    would run one a second time (Python warns, and ``PYTHONWARNINGS=error`` turns the
    warning into a failure).
    """
    # sys.argv[0] is the module's file, as under -m: a user's entry may look at it.
    # import_module, not `import a.b as m`: the package's function `preflight` shadows its module.
    program = (f"import importlib, sys; m = importlib.import_module({module!r}); sys.argv[0] = m.__file__; "
               f"sys.exit(m.{function}())")
    return [sys.executable, *SAFE_PATH, "-c", program]


_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_DEVICE_FLAG_RE = re.compile(re.escape(_DEVICE_FLAG) + r"=(\d+)")


@dataclass(frozen=True)
class KernelResult:
    """One kernel's outcome.

    Attributes:
        target: the target's label.
        kernel: the kernel's name (None when the target could not be built).
        module: JAX's module name(s) of what it compiled.
        status: ``compiled`` (this warm compiled it), ``cached`` (it was in the
            cache already, or another kernel of this warm is the same program:
            see ``same_as``) or ``failed``.
        wall_seconds: this warm's time on it: tracing, lowering, compiling, storing.
        compile_seconds: what JAX measured compiling it, the figure jaxcache's
            write log keeps and ``jaxcache ls`` shows; None unless compiled here
            with JAX's cache on.
        keys: the JAX cache keys of its entries, where known.
        same_as: the kernel of this warm that compiled the same entry.
        reason: why it failed, or a note.
    """

    target: str
    kernel: str | None
    module: str | None
    status: str
    wall_seconds: float = 0.0
    compile_seconds: float | None = None
    keys: tuple[str, ...] = ()
    same_as: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "keys": list(self.keys)}


@dataclass(frozen=True)
class WarmReport:
    """Everything a warm did (up to a Ctrl-C, if ``interrupted``)."""

    results: tuple[KernelResult, ...]
    seconds: float
    warnings: tuple[str, ...] = ()
    interrupted: bool = False
    planned: int | None = None  # kernels the plan has (None: unknown)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and not self.interrupted

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "interrupted": self.interrupted,
            "planned": self.planned,
            "compiled": self.count("compiled"),
            "cached": self.count("cached"),
            "failed": self.count("failed"),
            "seconds": round(self.seconds, 3),
            "warnings": list(self.warnings),
            "kernels": [r.as_dict() for r in self.results],
        }


class WarmInterrupted(KeyboardInterrupt):
    """Ctrl-C during a warm: its workers are stopped; ``report`` holds the kernels done by then."""

    def __init__(self, report: WarmReport) -> None:
        super().__init__()
        self.report = report


def host_device_count(env: Mapping[str, str]) -> int:
    """How many CPU devices a process started with this environment gets."""
    match = _DEVICE_FLAG_RE.search(env.get("XLA_FLAGS", ""))
    if match:
        return int(match.group(1))
    return int(env.get("JAX_NUM_CPU_DEVICES", "1") or 1)


def worker_env(base: Mapping[str, str], platform: str | None, devices: int) -> dict[str, str]:
    """The environment of a process configured for (platform, devices), as the run must be."""
    env = dict(base)
    if platform is not None:
        env["JAX_PLATFORMS"] = platform
    if platform in (None, "cpu") and devices != host_device_count(base):
        flags = _DEVICE_FLAG_RE.sub("", env.get("XLA_FLAGS", "")).split()
        env["XLA_FLAGS"] = " ".join([*flags, f"{_DEVICE_FLAG}={devices}"])
        env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


def key_warnings(plan: WarmPlan, env: Mapping[str, str]) -> list[str]:
    """Where a plan's configuration would give keys that the user's runs, started
    from this same environment, would not look up."""
    out = []
    here = host_device_count(env)
    for devices in sorted({t.devices for t in plan.targets if t.platform in (None, "cpu")}):
        if devices != here:
            out.append(
                f"kernels warmed for {devices} host device(s) only hit in processes started with "
                f"XLA_FLAGS={_DEVICE_FLAG}={devices} (this environment gives {here}): the key covers every device"
            )
    if any(t.platform not in (None, env.get("JAX_PLATFORMS")) for t in plan.targets) and "JAX_PLATFORMS" not in env:
        out.append("--platform is set: runs hit these entries only on that backend with the same devices attached")
    return out


def _pump(proc: subprocess.Popen[str], sink: queue.Queue[tuple[int, dict[str, Any] | None]], ident: int) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            sink.put((ident, json.loads(line)))
        except ValueError:
            continue  # stray output of the user's code
    sink.put((ident, None))


def run_workers(
    cache_dir: Path,
    targets: list[Target],
    *,
    jobs: int,
    env: Mapping[str, str],
    on_event: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Starts ``jobs`` workers for targets sharing one process configuration; returns their events."""
    platform, devices, _ = targets[0].process_config
    wenv = worker_env(env, platform, devices)
    # Several workers share one GPU: by default each would grab 75% of its memory at
    # start, and all but the first would fail. They hold no data, and the key does not
    # depend on it (it is not an XLA flag), so they allocate as they go.
    wenv.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    claims = tempfile.TemporaryDirectory(prefix="jaxcache-warm-")
    job = {"cache_dir": str(cache_dir), "targets": [t.as_dict() for t in targets], "claims": claims.name}
    procs = []
    for worker in range(jobs):
        proc = subprocess.Popen(
            child_command("jaxcache.warming.worker", "main"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=wenv,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({**job, "worker": worker, "workers": jobs}))
        proc.stdin.close()
        procs.append(proc)
    sink: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
    stderr: dict[int, list[str]] = {}
    threads = [threading.Thread(target=_pump, args=(p, sink, i), daemon=True) for i, p in enumerate(procs)]
    err_threads = [
        threading.Thread(target=lambda p=p, i=i: stderr.__setitem__(i, p.stderr.read().splitlines()), daemon=True)
        for i, p in enumerate(procs)
    ]
    for t in (*threads, *err_threads):
        t.start()
    events: list[dict[str, Any]] = []
    open_workers = len(procs)
    try:
        while open_workers:
            _, event = sink.get()
            if event is None:
                open_workers -= 1
                continue
            events.append(event)
            on_event(event)
    except BaseException:  # Ctrl-C, or a failing progress callback: no worker outlives the warm
        _stop(procs)
        claims.cleanup()
        raise
    for t in err_threads:
        t.join()
    claims.cleanup()
    for i, proc in enumerate(procs):
        code = proc.wait()
        if code not in (0, 1):  # 1: some kernel failed and was reported; anything else: the worker died
            lines = [l for l in stderr.get(i, []) if l.strip()]
            event = {"target": ", ".join(t.label for t in targets), "kernel": None, "module": None, "status": "failed",
                     "reason": f"worker exited with code {code}: {lines[-1] if lines else 'no output'}"}
            events.append(event)
            on_event(event)
    return events


def _stop(procs: list[subprocess.Popen[str]], grace: float = 5.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def warm(
    plan: WarmPlan,
    cache_dir: Path,
    *,
    jobs: int | None = None,
    env: Mapping[str, str] | None = None,
    progress: Callable[[KernelResult | None, int, int], None] | None = None,
    checked: Preflight | None = None,
) -> WarmReport:
    """Compiles every kernel of a plan into the cache.

    Args:
        plan: what to warm.
        cache_dir: the cache root (each worker calls ``jaxcache.configure`` on it).
        jobs: worker processes per configuration (default: the number of cores).
        env: the environment the runs will have (default ``os.environ``).
        progress: called as ``progress(result_or_None, done, total)``: once with
            None before the first worker starts, then as each kernel finishes.
        checked: the plan's `preflight`, if the caller ran it (else it runs here).

    Raises:
        UsageError: an ``entry`` the preflight refuses (before any worker starts).
        WarmInterrupted: Ctrl-C; its ``report`` has the kernels done so far.
    """
    env = dict(os.environ if env is None else env)
    from jaxcache.keyparts import RUN_ID_ENV, new_run_id

    env.setdefault(RUN_ID_ENV, "warm-" + new_run_id())  # all its workers: one run for `jaxcache explain`
    checked = checked if checked is not None else preflight(plan, env=env)
    jobs = max(1, jobs or os.cpu_count() or 1)
    start = time.perf_counter()
    groups: dict[tuple[Any, ...], list[Target]] = {}
    for target in plan.targets:
        groups.setdefault(target.process_config, []).append(target)
    results: list[KernelResult] = []
    warnings: list[str] = []
    reported: set[tuple[str, str | None]] = set()
    compiled_by: dict[str, tuple[str, str | None]] = {}  # key -> (target, kernel) whose compile wrote it
    counts = dict(checked.kernels)

    def total() -> int:
        return max(sum(counts.values()), len(results))

    def on_event(event: dict[str, Any]) -> None:
        if "warning" in event:
            warnings.append(str(event["warning"]))
            return
        if "kernels" in event:
            if counts.get(event["target"]) != int(event["kernels"]):  # the preflight counted otherwise
                counts[event["target"]] = int(event["kernels"])
                if progress:
                    progress(None, len(results), total())
            return
        result = KernelResult(**{k: event[k] for k in KernelResult.__dataclass_fields__ if k in event})
        result = replace(result, keys=tuple(result.keys))
        if result.kernel is not None and (result.target, result.kernel) in reported:
            return  # a second worker compiled it too (its claims folder failed): one row per kernel
        reported.add((result.target, result.kernel))
        if result.status == "compiled" and result.keys:
            first = next((compiled_by[k] for k in result.keys if k in compiled_by), None)
            if first is not None:  # e.g. the "auto" Jacobian is one of its probes: one entry, compiled once
                name = first[1] if first[0] == result.target else f"{first[0]}: {first[1]}"
                result = replace(result, status="cached", compile_seconds=None, same_as=name,
                                 reason=f"the same program as {name}")
            else:
                compiled_by.update(dict.fromkeys(result.keys, (result.target, result.kernel)))
        results.append(result)
        if progress:
            progress(result, len(results), total())

    def report(*, interrupted: bool = False) -> WarmReport:
        return WarmReport(results=tuple(results), seconds=time.perf_counter() - start,
                          warnings=tuple(key_warnings(plan, env) + warnings), interrupted=interrupted,
                          planned=total())

    if progress:
        progress(None, 0, total())
    try:
        for targets in groups.values():
            # No more workers than kernels.
            most = sum(counts.get(t.label, 1) for t in targets)
            run_workers(cache_dir, targets, jobs=min(jobs, most), env=env, on_event=on_event)
    except KeyboardInterrupt:
        raise WarmInterrupted(report(interrupted=True)) from None
    return report()
