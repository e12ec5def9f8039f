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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jaxcache import provenance
from jaxcache.configuration import cache_env, prepare_folder
from jaxcache.errors import CacheDirError, JaxCacheError
from jaxcache.index import META_DIR_NAME
from jaxcache.settings import Settings

Shell = Literal["bash", "zsh", "fish"]
STATE_NAME = "hook.json"


@dataclass
class HookResult:
    """What a hook did, and the environment to export."""

    env: dict[str, str]
    jaxlib: str
    upgraded_from: str | None = None
    pruned_entries: int = 0
    pruned_executables: int = 0
    freed_bytes: int = 0
    warmed: dict[str, int] | None = None
    messages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    tmp = path.with_name(f"{STATE_NAME}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)


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


def hook(settings: Settings, *, warm: bool = False, keep_versions: Sequence[str] = ()) -> HookResult:
    """Runs the pre-run step; see the module docstring.

    The upgrade rule keeps two environments sharing one cache from pruning
    each other: entries of other versions are pruned only when the installed
    jaxlib is newer than any this cache has seen before (the highest is kept
    in ``<root>/.jaxcache/hook.json``), and never those in ``keep_versions``.

    Raises:
        JaxCacheError: jaxlib is not installed, or the folder cannot be prepared.
    """
    versions = provenance.installed_versions()
    if versions is None:
        raise JaxCacheError("jaxlib is not installed in this environment: nothing to hook")
    root = settings.root
    state = _load_state(root)
    # Without a record, the versions whose folders are already here tell, this one's
    # included if it has been here before this hook (prepare_folder makes it now).
    seen = [] if state.get("highest_jaxlib") else _known_versions(root)
    jax_dir, _ = prepare_folder(settings)
    result = HookResult(env=cache_env(settings, jax_dir), jaxlib=versions.jaxlib)
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
        _prune_other_versions(settings, versions.jaxlib, keep_versions, result)
        highest = versions.jaxlib
    state["highest_jaxlib"] = highest

    if warm:
        _warm_missing(settings, versions.jaxlib, state, result)
    if state != before:
        try:
            _save_state(root, state)
        except OSError as e:
            raise CacheDirError(f"cannot write {_state_path(root)}: {e.strerror}") from None
    return result


def _prune_other_versions(settings: Settings, jaxlib: str, keep: Sequence[str], result: HookResult) -> None:
    from jaxcache.prune import execute, plan_prune
    from jaxcache.scanning import scan

    plan = plan_prune(scan(settings.root, last_used=False), stale=True, installed_version=jaxlib,
                      keep_versions=keep)
    done = execute(plan)
    result.pruned_entries = len(done.deleted)
    result.pruned_executables = len(done.executables_deleted)
    result.freed_bytes = done.freed_bytes
    result.messages.append(
        f"jaxlib {result.upgraded_from} -> {jaxlib}: pruned {len(done.deleted)} entries the new version can never hit"
    )


def _warm_missing(settings: Settings, jaxlib: str, state: dict[str, Any], result: HookResult) -> None:
    from jaxcache.settings import find_pyproject
    from jaxcache.warming import build_plan, plan_from_pyproject, warm

    import hashlib

    pyproject = find_pyproject(Path.cwd())
    plan = (plan_from_pyproject(pyproject) if pyproject else None) or build_plan(source="default (bundled problems)")
    digest = hashlib.sha256(json.dumps([t.as_dict() for t in plan.targets], sort_keys=True).encode()).hexdigest()[:16]
    warmed = state.setdefault("warmed", {})
    if warmed.get(jaxlib) == digest:
        return
    report = warm(plan, settings.root)
    result.warmed = {"compiled": report.count("compiled"), "cached": report.count("cached"),
                     "failed": report.count("failed")}
    result.messages.append(f"warmed {plan.source}: {result.warmed['compiled']} compiled, "
                           f"{result.warmed['cached']} already cached, {result.warmed['failed']} failed")
    if report.ok:
        warmed[jaxlib] = digest


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def render(env: dict[str, str], shell: Shell) -> str:
    """Shell code exporting the environment."""
    if shell == "fish":
        return "\n".join(f"set -gx {k} {_quote(v)};" for k, v in env.items())
    return "\n".join(f"export {k}={_quote(v)}" for k, v in env.items())
