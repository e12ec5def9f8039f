"""Before a warm starts: every ``--entry`` imported and called, every kernel counted.

A mistake in an entry point (a module that does not exist, a function that
raises or returns no kernels, a kernel that is not jitted) is a usage error,
reported in one line before any worker starts and before the cache folder is
made. The counts let the progress bar know its total from the start.

Entry points are user code: they run in a fresh process per process
configuration (backend, devices, x64), as the workers will run them, never in
the caller's. Bundled problems are counted without building them (building
compiles the "auto" probes).

Run as ``python -m jaxcache.warming.preflight`` with ``{"targets": [...]}`` on
stdin (the child). It prints ``{"checking": label}`` before each entry and
then ``{"kernels": {label: count}}`` or ``{"error": ..., "target": label}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jaxcache.errors import JaxCacheError, UsageError
from jaxcache.warming.plan import Target, WarmPlan


@dataclass(frozen=True)
class Preflight:
    """What a warm will do: the number of kernels of each target (by label)."""

    kernels: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.kernels.values())

    def as_dict(self) -> dict[str, Any]:
        return {"kernels": dict(self.kernels), "total": self.total}


def preflight(plan: WarmPlan, *, env: Mapping[str, str] | None = None) -> Preflight:
    """Checks every entry point of a plan and counts its kernels; starts no worker, writes nothing.

    Raises:
        UsageError: an entry point that cannot be imported, raises, returns no
            kernels or something else than kernels, or lists a function that
            is not jitted; one line, naming the entry.
        JaxCacheError: the checking process died before calling any entry.
    """
    from jaxcache.warming.runner import child_command, worker_env

    env = dict(os.environ if env is None else env)
    groups: dict[tuple[Any, ...], list[Target]] = {}
    for target in plan.targets:
        groups.setdefault(target.process_config, []).append(target)
    kernels: dict[str, int] = {}
    for (platform, devices, x64), targets in groups.items():
        wenv = worker_env(env, platform, devices)
        wenv.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        proc = subprocess.run(child_command("jaxcache.warming.preflight", "_child"),
                              input=json.dumps({"targets": [t.as_dict() for t in targets], "x64": x64}),
                              capture_output=True, text=True, env=wenv)
        events = [json.loads(line) for line in proc.stdout.splitlines() if _is_event(line)]
        done = next((e for e in events if "kernels" in e or "error" in e), None)
        if done is not None and "error" in done:
            raise UsageError(f"{_where(plan, done['target'])}: {done['error']}")
        if done is None or proc.returncode != 0:
            checking = next((e["checking"] for e in reversed(events) if "checking" in e), None)
            last = [line for line in proc.stderr.splitlines() if line.strip()]
            why = f"the process exited with code {proc.returncode}" + (f" ({last[-1].strip()})" if last else "")
            if checking is None:  # a crash before any entry ran: a failure, not a bad argument
                raise JaxCacheError(f"cannot prepare the warm: {why}")
            raise UsageError(f"{_where(plan, checking)}: {why} while calling it")  # as an entry that raises
        kernels.update({label: int(n) for label, n in done["kernels"].items()})
    return Preflight(kernels)


def _is_event(line: str) -> bool:
    if not line.startswith("{"):
        return False  # the user's own output
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and bool({"checking", "kernels", "error"} & set(event))


def _where(plan: WarmPlan, label: str) -> str:
    return f"--entry {label}" if plan.source == "flags" else f"{plan.source}: entry {label}"


def _child() -> int:
    from jaxcache.warming import worker

    worker.die_with_parent()
    import solver  # noqa: F401 (before the current folder joins the path: see worker.main)

    sys.path.append(os.getcwd())
    job = json.loads(sys.stdin.read())
    if job.get("x64"):
        import jax

        jax.config.update("jax_enable_x64", True)
    counts: dict[str, int] = {}
    for raw in job["targets"]:
        target = Target(**raw)
        if target.entry is None:
            try:
                counts[target.label] = worker.bundled_kernel_count(target)
            except Exception:  # noqa: BLE001 (its worker reports the failed build as one kernel)
                counts[target.label] = 1
            continue
        print(json.dumps({"checking": target.label}), flush=True)
        try:
            counts[target.label] = len(worker.entry_kernels(target.entry))
        except Exception as error:  # noqa: BLE001 (the user's code: any error is theirs to fix)
            print(json.dumps({"error": worker.one_line(error), "target": target.label}), flush=True)
            return 0
    print(json.dumps({"kernels": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child())
