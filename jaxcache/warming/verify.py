"""``jaxcache verify``: a fresh process runs the real solve and must hit every solver kernel.

For a bundled problem the child runs ``solver.least_squares`` exactly as
``python -m solver`` would (same problem constructor, same options) and
reports JAX's persistent-cache hits and misses per module. For a user's entry
point there is no "real run" to replay, so its kernels are lowered and
compiled again in a fresh worker, and every one must be a hit.

Run as ``python -m jaxcache.warming.verify`` with ``{"cache_dir", "target"}`` on stdin (the child).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxcache.warming.plan import Target, WarmPlan
from jaxcache.warming.runner import child_command, run_workers, worker_env

SOLVER_KERNEL_PREFIX = "jit_lsq_"


@dataclass(frozen=True)
class VerifyResult:
    """What one fresh run of a target hit and missed, per module."""

    target: str
    modules: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None
    converged: bool | None = None  # bundled solves: whether the solve ended in success
    entry: bool = False  # an entry point's kernels (named by the entry), not a solve's modules

    def _is_kernel(self, module: str) -> bool:
        return self.entry or module.startswith(SOLVER_KERNEL_PREFIX)

    @property
    def missed_kernels(self) -> list[str]:
        """Solver kernels (or, for entries, any kernel) that were compiled instead of loaded."""
        return sorted(m for m, c in self.modules.items() if c.get("misses") and self._is_kernel(m))

    @property
    def other_compiles(self) -> list[str]:
        """Modules outside the solver's kernels that the run compiled (small glue ops)."""
        return sorted(m for m, c in self.modules.items() if c.get("misses") and not self._is_kernel(m))

    @property
    def ok(self) -> bool:
        # A hit proves a key matched, not that the executable is right (jaxlib 0.6.0
        # reloaded a while loop wrongly): a bundled solve must also converge.
        return self.error is None and not self.missed_kernels and self.converged is not False

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "error": self.error, "converged": self.converged,
                "entry": self.entry,
                "missed_kernels": self.missed_kernels,
                "other_compiles": self.other_compiles, "modules": self.modules}


def verify(
    plan: WarmPlan,
    cache_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    progress: Callable[[VerifyResult], None] | None = None,
) -> list[VerifyResult]:
    """Runs each target fresh and collects hits and misses."""
    env = dict(os.environ if env is None else env)
    from jaxcache.keyparts import RUN_ID_ENV, new_run_id

    env.setdefault(RUN_ID_ENV, "verify-" + new_run_id())  # its fresh processes: one run for `jaxcache explain`
    results = []
    for target in plan.targets:
        result = _verify_entry(target, cache_dir, env) if target.entry else _verify_problem(target, cache_dir, env)
        results.append(result)
        if progress:
            progress(result)
    return results


def _verify_problem(target: Target, cache_dir: Path, env: Mapping[str, str]) -> VerifyResult:
    proc = subprocess.run(
        child_command("jaxcache.warming.verify", "_child"),
        input=json.dumps({"cache_dir": str(cache_dir), "target": target.as_dict()}),
        capture_output=True, text=True, env=worker_env(env, target.platform, target.devices),
    )
    line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        last = [l for l in proc.stderr.splitlines() if l.strip()]
        return VerifyResult(target.label, error=f"the run failed (exit {proc.returncode}): {last[-1] if last else ''}")
    data = json.loads(line)
    return VerifyResult(target.label, modules=data["modules"], converged=data.get("success"))


def _verify_entry(target: Target, cache_dir: Path, env: Mapping[str, str]) -> VerifyResult:
    modules: dict[str, dict[str, float]] = {}
    errors = []
    for event in run_workers(cache_dir, [target], jobs=1, env=env, on_event=lambda e: None):
        if "status" not in event:
            continue
        if event["status"] == "failed":
            errors.append(f"{event.get('kernel')}: {event.get('reason')}")
            continue
        hit = event["status"] == "cached"
        modules[event["kernel"]] = {"requests": 1, "hits": int(hit), "misses": int(not hit)}
    return VerifyResult(target.label, modules=modules, error="; ".join(errors) or None, entry=True)


def _child() -> int:
    job = json.loads(sys.stdin.read())
    target = Target(**job["target"])
    import jax

    if target.x64:
        jax.config.update("jax_enable_x64", True)
    import jaxcache
    from jaxcache.compilelog import CompileLog

    jaxcache.configure(job["cache_dir"])
    log = CompileLog().start()
    import solver

    objective, x0 = solver.problems.get(
        target.problem, target.size, deriv_mode=target.deriv_mode, jac_chunk_size=target.jac_chunk_size
    )
    result = solver.least_squares(objective, x0)
    log.stop()
    print(json.dumps({"modules": log.snapshot(), "success": bool(result.success), "cost": float(result.cost)}))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
