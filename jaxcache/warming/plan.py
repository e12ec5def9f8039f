"""What to warm: bundled solver problems and users' own kernels, from flags or TOML."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from jaxcache.errors import UsageError

# Mirrors solver.problems.NAMES, so that reading a plan needs no JAX import.
PROBLEMS = ("rosenbrock", "bratu", "spectral", "curvefit", "kinetics")
# The size `python -m solver` uses by default, so a plain run hits what a plain warm wrote.
DEFAULT_SIZE = 16
PLATFORMS = ("cpu", "gpu", "tpu")
DERIV_MODES = ("batched", "blocked")
_ENTRY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

ChunkSize = int | Literal["auto"]


@dataclass(frozen=True)
class Target:
    """One configuration to warm.

    Attributes:
        problem: a bundled problem name, or None for an entry point.
        entry: ``pkg.module:function`` returning kernels to compile, or None.
        size: the problem's size knob (bundled problems only).
        jac_chunk_size: an int or "auto" (bundled problems only).
        deriv_mode: "batched" or "blocked" (bundled problems only).
        x64: whether the run enables ``jax_enable_x64``.
        platform: "cpu", "gpu" or "tpu"; None for JAX's default backend.
        devices: how many devices the run's process has (CPU: host devices).
    """

    problem: str | None = None
    entry: str | None = None
    size: int | None = None
    jac_chunk_size: ChunkSize = "auto"
    deriv_mode: str = "batched"
    x64: bool = False
    platform: str | None = None
    devices: int = 1

    @property
    def label(self) -> str:
        if self.entry is not None:
            what = self.entry
        else:
            what = f"{self.problem}-{self.size}"
            if self.jac_chunk_size != "auto":
                what += f" chunk={self.jac_chunk_size}"
            if self.deriv_mode != "batched":
                what += f" {self.deriv_mode}"
        extras = [e for e in ("x64" if self.x64 else "", self.platform or "", f"{self.devices}dev" if self.devices > 1 else "") if e]
        return f"{what} [{', '.join(extras)}]" if extras else what

    @property
    def process_config(self) -> tuple[str | None, int, bool]:
        """What must be fixed per process: the backend, the device count, x64."""
        return (self.platform, self.devices, self.x64)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WarmPlan:
    """The targets to warm and where the plan came from."""

    targets: tuple[Target, ...]
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "targets": [t.as_dict() for t in self.targets]}


def _chunk(value: Any, where: str) -> ChunkSize:
    if value == "auto":
        return "auto"
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number <= 0 or str(number) != str(value).strip():
        raise UsageError(f"{where}: jac_chunk_size {value!r} must be a positive int or 'auto'")
    return number


def _positive(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{where}: {what} {value!r} must be a positive integer")
    return value


def _choice(value: Any, choices: Sequence[str], what: str, where: str) -> str:
    if value not in choices:
        raise UsageError(f"{where}: {what} {value!r} must be one of {', '.join(choices)}")
    return value


def validate_entry(entry: str, where: str = "--entry") -> str:
    if not isinstance(entry, str) or not _ENTRY_RE.match(entry):
        raise UsageError(f"{where}: {entry!r} must look like 'package.module:function'")
    return entry


def build_plan(
    *,
    problems: Iterable[str] = (),
    sizes: Iterable[int] = (),
    entries: Iterable[str] = (),
    jac_chunk_size: Any = "auto",
    deriv_mode: str = "batched",
    x64: bool = False,
    platform: str | None = None,
    devices: int = 1,
    source: str = "flags",
) -> WarmPlan:
    """A plan from flag-style options: every problem at every size, plus each entry.

    With no problem and no entry, the bundled problems at their default size.

    Raises:
        UsageError: an unknown problem or bad value.
    """
    def at(flag: str) -> str:
        """Where a bad value came from: the flag itself, or the plan file."""
        return flag if source == "flags" else source

    problems, sizes, entries = list(problems), list(sizes), list(entries)
    for name in problems:
        _choice(name, PROBLEMS, "problem", at("--problem"))
    for size in sizes:
        _positive(size, "size", at("--size"))
    for entry in entries:
        validate_entry(entry, at("--entry"))
    chunk = _chunk(jac_chunk_size, at("--jac-chunk-size"))
    _choice(deriv_mode, DERIV_MODES, "deriv_mode", at("--deriv-mode"))
    if platform is not None:
        _choice(platform, PLATFORMS, "platform", at("--platform"))
    _positive(devices, "devices", at("--devices"))
    if not isinstance(x64, bool):
        raise UsageError(f"{at('--x64')}: x64 {x64!r} must be true or false")
    if not problems and not entries:
        problems = list(PROBLEMS)
    base = Target(jac_chunk_size=chunk, deriv_mode=deriv_mode, x64=x64, platform=platform, devices=devices)
    targets = [replace(base, problem=p, size=s) for p, s in itertools.product(problems, sizes or [DEFAULT_SIZE])]
    targets += [replace(base, entry=e, jac_chunk_size="auto", deriv_mode="batched") for e in entries]
    return WarmPlan(targets=tuple(dict.fromkeys(targets)), source=source)


_PLAN_KEYS = {"problems", "sizes", "entries", "jac_chunk_size", "deriv_mode", "x64", "platform", "devices", "targets"}
_TARGET_KEYS = {"problem", "entry", "size", "jac_chunk_size", "deriv_mode", "x64", "platform", "devices"}


def plan_from_table(table: Mapping[str, Any], source: str) -> WarmPlan:
    """A plan from a ``[tool.jaxcache.warm]`` table or a plan file.

    Keys as the flags (``problems``, ``sizes``, ``entries``, ``jac_chunk_size``,
    ``deriv_mode``, ``x64``, ``platform``, ``devices``) and optionally
    ``targets``: a list of tables, each one target with its own values.

    Raises:
        UsageError: an unknown key or bad value, naming where.
    """
    if not isinstance(table, Mapping):
        raise UsageError(f"{source}: expected a table")
    unknown = set(table) - _PLAN_KEYS
    if unknown:
        raise UsageError(f"{source}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_PLAN_KEYS))})")
    common = {k: table[k] for k in ("jac_chunk_size", "deriv_mode", "x64", "platform", "devices") if k in table}
    lists = {}
    for key in ("problems", "sizes", "entries"):
        value = table.get(key, [])
        if not isinstance(value, list):
            raise UsageError(f"{source}: {key} must be a list")
        lists[key] = value
    explicit = table.get("targets", [])
    if not isinstance(explicit, list) or not all(isinstance(t, Mapping) for t in explicit):
        raise UsageError(f"{source}: targets must be a list of tables")
    targets: list[Target] = []
    if lists["problems"] or lists["entries"] or not explicit:
        targets += build_plan(**lists, **common, source=source).targets
    for i, raw in enumerate(explicit):
        where = f"{source}: targets[{i}]"
        unknown = set(raw) - _TARGET_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        if ("problem" in raw) == ("entry" in raw):
            raise UsageError(f"{where}: give exactly one of problem or entry")
        options = {**common, **{k: v for k, v in raw.items() if k not in ("problem", "entry", "size")}}
        one = build_plan(
            problems=[raw["problem"]] if "problem" in raw else [],
            sizes=[raw["size"]] if "size" in raw else [],
            entries=[raw["entry"]] if "entry" in raw else [],
            **options,
            source=where,
        )
        targets += one.targets
    return WarmPlan(targets=tuple(dict.fromkeys(targets)), source=source)


def plan_from_file(path: Path) -> WarmPlan:
    """A plan file: the same keys as ``[tool.jaxcache.warm]``, at the top level or under it."""
    from jaxcache.settings import read_toml

    if not path.exists():
        raise UsageError(f"plan file {path} does not exist")
    if path.is_dir():
        raise UsageError(f"plan file {path} is a folder")
    data = read_toml(path)
    table = data.get("tool", {}).get("jaxcache", {}).get("warm", data) if "tool" in data else data
    return plan_from_table(table, f"plan file {path}")


def plan_from_pyproject(pyproject: Path) -> WarmPlan | None:
    """The ``[tool.jaxcache.warm]`` table of a pyproject.toml, if it has one."""
    from jaxcache.settings import read_toml

    table = read_toml(pyproject).get("tool", {}).get("jaxcache", {}).get("warm")
    if table is None:
        return None
    return plan_from_table(table, f"[tool.jaxcache.warm] of {pyproject}")


# The options that shape every target of flags or the default, but not a plan read from a file.
PROCESS_OPTIONS = ("jac_chunk_size", "deriv_mode", "x64", "platform", "devices")


def choose_plan(
    *,
    problems: Sequence[str] = (),
    sizes: Sequence[int] = (),
    entries: Sequence[str] = (),
    plan_file: Path | None = None,
    project_dir: Path | None = None,
    options: Mapping[str, Any] | None = None,
    given: Iterable[str] = (),
) -> WarmPlan:
    """The plan a warm or verify uses, by precedence: targets named outright
    (``problems``, ``sizes``, ``entries``), else ``plan_file``, else the
    ``[tool.jaxcache.warm]`` table of the project's pyproject.toml, else the
    bundled problems. Files are read only where the precedence reaches them.

    Args:
        problems, sizes, entries: targets named outright (``--problem``, ``--size``, ``--entry``).
        plan_file: a TOML plan (``--plan``).
        project_dir: where to look for a pyproject.toml with ``[tool.jaxcache]``
            (this folder, then its parents; the CLI gives the current folder);
            None: nowhere.
        options: values of `PROCESS_OPTIONS` for named targets and the default
            (unset ones take `build_plan`'s defaults).
        given: which of ``options`` the caller set on purpose: a plan from a
            file or pyproject sets them itself, so giving one there is an error
            rather than silently ignored.

    Raises:
        UsageError: both targets and a plan file; an option given for a plan
            that sets its own; or any bad value.
    """
    options = dict(options or {})
    unknown = set(options) - set(PROCESS_OPTIONS)
    if unknown:
        raise UsageError(f"unknown warm option {sorted(unknown)[0]!r} (known: {', '.join(PROCESS_OPTIONS)})")
    if problems or sizes or entries:
        if plan_file is not None:
            raise UsageError("give a --plan file or --problem/--size/--entry flags, not both")
        return build_plan(problems=problems, sizes=sizes, entries=entries, **options)
    if plan_file is not None:
        plan = plan_from_file(plan_file)
    else:
        from jaxcache.settings import find_pyproject

        pyproject = find_pyproject(project_dir) if project_dir is not None else None
        plan = plan_from_pyproject(pyproject) if pyproject is not None else None
    if plan is None:
        return build_plan(**options, source="default (bundled problems)")
    explicit = [name for name in PROCESS_OPTIONS if name in set(given)]
    if explicit:
        raise UsageError(f"--{explicit[0].replace('_', '-')} does not apply to a plan from {plan.source}; set it there")
    return plan


def require_backends(plan: WarmPlan) -> None:
    """Refuses, before any worker starts, a plan for a backend this install cannot reach.

    Raises:
        UsageError: a target asks for ``gpu`` without a JAX GPU plugin, or ``tpu`` without libtpu.
    """
    import importlib.util

    from jaxcache.configuration import gpu_plugin_installed

    platforms = {t.platform for t in plan.targets}
    if "gpu" in platforms and not gpu_plugin_installed():
        raise UsageError("--platform gpu: no JAX GPU plugin is installed here (pip install 'jax[cuda12]'); "
                         "warm on a machine like the one that will run")
    if "tpu" in platforms and importlib.util.find_spec("libtpu") is None:
        raise UsageError("--platform tpu: libtpu is not installed here (pip install 'jax[tpu]'); "
                         "warm on a machine like the one that will run")

