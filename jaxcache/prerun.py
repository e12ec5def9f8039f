"""``jaxcache hook``: the cheap, idempotent pre-run step for job scripts, containers and CI.

``eval "$(jaxcache hook --shell bash)"`` makes sure the cache folder exists,
notices a jaxlib upgrade since the last hook and prunes what the new version
can never hit, optionally warms what is missing, and prints the environment
that points every JAX process at the cache. With nothing to do it reads one
small state file and imports no JAX.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jaxcache import atomic, provenance
from jaxcache.configuration import cache_env, prepare_folder
from jaxcache.errors import CacheDirError, JaxCacheError
from jaxcache.index import META_DIR_NAME
from jaxcache.settings import Settings

if TYPE_CHECKING:
    from jaxcache.prune import PrunePlan

Shell = Literal["bash", "zsh", "fish"]
STATE_NAME = "hook.json"


UpgradePrune = Literal["none", "done", "dry-run", "refused", "declined"]
"""What became of the upgrade prune: none needed; done; only planned (``dry_run``);
refused (nobody to approve it); declined (the approver said no)."""


@dataclass
class HookResult:
    """What a hook did, and the environment to export."""

    env: dict[str, str]
    jaxlib: str
    upgraded_from: str | None = None
    upgrade_prune: UpgradePrune = "none"
    prune_plan: PrunePlan | None = None
    pruned_entries: int = 0
    pruned_executables: int = 0
    freed_bytes: int = 0
    warmed: dict[str, int] | None = None
    pulled: dict[str, Any] | None = None  # what the pull from the `remote` setting did (jaxcache.fleet)
    messages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "prune_plan"}
        out["prune_plan"] = self.prune_plan.as_dict() if self.prune_plan is not None else None
        return out


def version_key(version: str) -> tuple[int, ...]:
    """Orders release strings like 0.4.38 < 0.9.2 < 0.10.2 (pre-release suffixes ignored)."""
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:4])


def _state_path(root: Path) -> Path:
    return root / META_DIR_NAME / STATE_NAME


def _load_state(root: Path) -> dict[str, Any]:
    try:
        data = json.loads(_state_path(root).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_state(root: Path, state: dict[str, Any]) -> None:
    path = _state_path(root)
    path.parent.mkdir(exist_ok=True)
    atomic.write_atomically(path, (json.dumps(state, indent=1) + "\n").encode())


def _known_versions(root: Path) -> list[str]:
    versions = []
    try:
        for child in root.iterdir():
            if child.name.startswith(provenance.VERSION_DIR_PREFIX) and not child.is_symlink():
                marker = provenance.read_marker(child)
                if marker is not None:
                    versions.append(marker.jaxlib)
    except OSError:
        pass
    return versions


def hook(settings: Settings, *, warm: bool = False, keep_versions: Sequence[str] = (), dry_run: bool = False,
         approve: Callable[[PrunePlan], bool] | None = None) -> HookResult:
    """Runs the pre-run step; see the module docstring.

    The upgrade rule keeps two environments sharing one cache from pruning
    each other: entries of other versions are pruned only when the installed
    jaxlib is newer than any this cache has seen before (the highest is kept
    in ``<root>/.jaxcache/hook.json``), and never those in ``keep_versions``.
    Like every deletion, that prune is a plan first: ``dry_run`` only plans it;
    otherwise ``approve(plan)`` decides, and without an approver nothing is
    deleted ("refused"). Until a prune is done the upgrade is not recorded, so
    the next hook asks again; the environment is returned either way.

    Raises:
        JaxCacheError: jaxlib is not installed, or the folder cannot be prepared.
        NotACacheError: the folder holds other files and is not a cache.
    """
    versions = provenance.installed_versions()
    if versions is None:
        raise JaxCacheError("jaxlib is not installed in this environment: nothing to hook")
    root = settings.root
    from jaxcache.scanning import require_cache_or_new

    require_cache_or_new(root)
    state = _load_state(root)
    # Without a record, the versions whose folders are already here tell, this one's
    # included if it has been here before this hook (prepare_folder makes it now).
    seen = [] if state.get("highest_jaxlib") else _known_versions(root)
    jax_dir, _ = prepare_folder(settings)
    result = HookResult(env=cache_env(settings, jax_dir), jaxlib=versions.jaxlib)
    result.messages.extend(f"warning: {note}" for note in settings.skipped)
    from jaxcache.security import cache_problems

    problems = cache_problems(root, jax_dir)
    if problems and settings.strict.value:
        raise CacheDirError(f"refusing an unsafe cache folder (strict mode): {problems[0]}")
    result.messages.extend(problems)

    before = dict(state)
    # An upgrade: this jaxlib is newer than every one the cache has seen.
    highest = state.get("highest_jaxlib") or max(seen, key=version_key, default=versions.jaxlib)
    if version_key(versions.jaxlib) > version_key(highest):
        result.upgraded_from = highest
        _prune_other_versions(settings, versions.jaxlib, keep_versions, result, dry_run=dry_run, approve=approve)
        if result.upgrade_prune == "done":
            highest = versions.jaxlib
    state["highest_jaxlib"] = highest

    if settings.remote.value:
        _pull(settings, result)
    if warm:
        _warm_missing(settings, versions.jaxlib, state, result)
    if state != before:
        try:
            _save_state(root, state)
        except OSError as e:
            raise CacheDirError(f"cannot write {_state_path(root)}: {e.strerror}") from None
    return result


def _prune_other_versions(settings: Settings, jaxlib: str, keep: Sequence[str], result: HookResult, *,
                          dry_run: bool, approve: Callable[[PrunePlan], bool] | None) -> None:
    from jaxcache.prune import execute, plan_prune
    from jaxcache.scanning import scan

    plan = plan_prune(scan(settings.root, last_used=False), stale=True, installed_version=jaxlib,
                      keep_versions=keep)
    result.prune_plan = plan
    upgrade = f"jaxlib {result.upgraded_from} -> {jaxlib}"
    if not plan.deletions and not plan.executables:
        result.upgrade_prune = "done"
        result.messages.append(f"{upgrade}: no entries of other versions to prune")
        return
    what = _plan_summary(plan)
    if dry_run:
        result.upgrade_prune = "dry-run"
        result.messages.append(f"{upgrade}: would prune {what} that the new version can never hit")
        return
    if approve is None or not approve(plan):
        result.upgrade_prune = "declined" if approve is not None else "refused"
        result.messages.append(f"{upgrade}: kept {what} that the new version can never hit (not approved)")
        return
    done = execute(plan)
    result.upgrade_prune = "done"
    result.pruned_entries = len(done.deleted)
    result.pruned_executables = len(done.executables_deleted)
    result.freed_bytes = done.freed_bytes
    skipped = f"; skipped {len(done.skipped)}" if done.skipped else ""
    result.messages.append(f"{upgrade}: pruned {_count(len(done.deleted), 'entry', 'entries')}"
                           f"{_stored(len(done.executables_deleted))} the new version can never hit{skipped}")


def _count(n: int, noun: str, plural: str) -> str:
    return f"{n} {noun if n == 1 else plural}"


def _stored(n: int) -> str:
    return f" and {_count(n, 'stored executable', 'stored executables')}" if n else ""


def _plan_summary(plan: PrunePlan) -> str:
    """``26 entries and 3 stored executables (12.1 MiB)``."""
    import humanize

    return (f"{_count(len(plan.deletions), 'entry', 'entries')}{_stored(len(plan.executables))} "
            f"({humanize.naturalsize(plan.freed_bytes, binary=True, format='%.1f')})")


def _warm_missing(settings: Settings, jaxlib: str, state: dict[str, Any], result: HookResult) -> None:
    from jaxcache.settings import find_pyproject
    from jaxcache.warming import build_plan, plan_from_pyproject, warm

    import hashlib

    try:  # a broken warm plan is a message: the job still gets its environment
        pyproject = find_pyproject(Path.cwd())
        plan = (plan_from_pyproject(pyproject) if pyproject else None) or build_plan(
            source="default (bundled problems)")
        digest = hashlib.sha256(json.dumps([t.as_dict() for t in plan.targets], sort_keys=True).encode()).hexdigest()[:16]
        warmed = state.setdefault("warmed", {})
        if warmed.get(jaxlib) == digest:
            return
        report = warm(plan, settings.root)
    except JaxCacheError as e:
        result.messages.append(f"warning: not warmed: {e}")
        return
    result.warmed = {"compiled": report.count("compiled"), "cached": report.count("cached"),
                     "failed": report.count("failed")}
    result.messages.append(f"warmed {plan.source}: {result.warmed['compiled']} compiled, "
                           f"{result.warmed['cached']} already cached, {result.warmed['failed']} failed")
    if report.ok:
        warmed[jaxlib] = digest


def _pull(settings: Settings, result: HookResult) -> None:
    """Pulls from the ``remote`` setting; a failure is a message, never a job without its environment."""
    from jaxcache.fleet import plan_pull, policy_for, pull

    try:
        plan = plan_pull(settings, settings.remote.value, policy=policy_for(settings))
        done = pull(plan, settings)
    except JaxCacheError as e:
        result.pulled = {"remote": settings.remote.value, "error": str(e)}
        result.messages.append(f"warning: pull from {settings.remote.value} failed: {e}")
        return
    result.pulled = {"remote": plan.remote, "fetched": len(done.transferred.done), "bytes": done.transferred.bytes,
                     "here": plan.here, "skipped": len(plan.skipped), "failed": len(done.transferred.failed)}
    if done.transferred.done or done.transferred.failed:
        failed = f", {len(done.transferred.failed)} refused or failed" if done.transferred.failed else ""
        result.messages.append(f"pulled {len(done.transferred.done)} objects from {plan.remote}{failed}")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def render(env: dict[str, str], shell: Shell) -> str:
    """Shell code exporting the environment."""
    if shell == "fish":
        return "\n".join(f"set -gx {k} {_quote(v)};" for k, v in env.items())
    return "\n".join(f"export {k}={_quote(v)}" for k, v in env.items())
