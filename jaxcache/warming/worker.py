"""A warm worker: one process configured like a real run, compiling its share of kernels.

Run as ``python -m jaxcache.warming.worker`` with a JSON job on stdin::

    {"cache_dir": ..., "targets": [Target.as_dict(), ...], "worker": j, "workers": J, "claims": DIR}

Every target of a job shares one process configuration (backend, device
count, x64), set up by the parent through the environment before JAX starts,
exactly as the run it prepares. Workers share the targets and kernels through
claim files in the ``claims`` folder (see `jaxcache.warming.claims`); without
one, worker ``j`` compiles the kernels whose number is ``j`` modulo ``J``.
One JSON line per event goes to stdout: ``{"target", "kernels": n}`` once a
target is built, and one ``{"target", "kernel", "module", "status",
"wall_seconds", "compile_seconds", "keys", "reason"}`` per kernel, ``status``
being ``compiled`` (this warm compiled it: in its own turn, or while its
target was built, as the "auto" probes are), ``cached`` or ``failed``
(``kernel`` is null when the target could not be built). ``keys`` are the JAX
cache keys of its entries and ``compile_seconds`` what JAX measured compiling
them: the record jaxcache's write log keeps, so the figure ``jaxcache ls`` shows.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from jaxcache.warming.claims import ClaimBoard
from jaxcache.warming.plan import Target


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class EntryError(ValueError):
    """An entry point that does not return what the protocol asks for (the message says what)."""


def one_line(error: BaseException) -> str:
    if isinstance(error, EntryError):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class KernelSpec:
    """One kernel to compile: a name, how to compile it, and its module name if known.

    ``compile`` returns ``"cached"`` or ``"compiled"`` when it knows (the
    executable store), else anything, and JAX's log of the compile decides.
    ``lookup`` compiles it the plain way, through JAX's persistent cache: for a
    kernel the store served, a hit that names its JAX key.
    """

    def __init__(self, name: str, compile: Callable[[], Any], module: str | None = None, args: Any = None,
                 lookup: Callable[[], Any] | None = None):
        self.name = name
        self.compile = compile
        self.module = module
        self.args = args  # an entry's abstract arguments, checked against the process's x64 setting
        self.lookup = lookup


class Heard:
    """What JAX logged while a step ran: keys hit and missed, and each key written with
    the compile time JAX measured for it (logged just before the write, per module)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.misses: list[str] = []
        self.writes: dict[str, float | None] = {}
        self.modules: set[str] = set()
        self._seconds: dict[str, float] = {}

    def __call__(self, kind: str, module: str, value: str | float) -> None:
        from jaxcache import compilelog

        self.modules.add(module)
        if kind == compilelog.HIT:
            self.hits.append(str(value))
        elif kind == compilelog.MISS:
            self.misses.append(str(value))
        elif kind == compilelog.COMPILE_TIME:
            self._seconds[module] = float(value)
        elif kind == compilelog.WRITE:
            self.writes[str(value)] = self._seconds.pop(module, None)

    @property
    def keys(self) -> list[str]:
        """Every key written or hit, in order, once."""
        return list(dict.fromkeys([*self.writes, *self.hits]))


@contextmanager
def listening() -> Iterator[Heard]:
    from jaxcache.compilelog import listen

    heard = Heard()
    remove = listen(heard)
    try:
        yield heard
    finally:
        remove()


_WIDE_DTYPES = frozenset({"float64", "int64", "uint64", "complex128"})


def _x64_warning(kernel: KernelSpec) -> str | None:
    """Why a kernel with 64-bit arguments in a process without x64 will not be what runs with x64 look up."""
    import jax

    if kernel.args is None or jax.config.jax_enable_x64:
        return None
    wide = sorted({str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(kernel.args)
                   if str(getattr(leaf, "dtype", "")) in _WIDE_DTYPES})
    if not wide:
        return None
    return (f"{kernel.name}: {', '.join(wide)} arguments were compiled as 32-bit, since x64 is off here "
            "(as JAX does); if your runs enable x64, warm with --x64")


def _aot(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:  # JAX's log decides
    """``jax.jit(f).lower(*specs).compile()``; an already-jitted ``f`` is lowered as it is,
    since wrapping it in another jit would nest a call and change the key."""
    import jax

    lowerable = fn if hasattr(fn, "lower") else jax.jit(fn)
    lowerable.lower(*args, **(kwargs or {})).compile()


def bundled_kernels(target: Target) -> list[KernelSpec]:
    """The solver's kernels for a bundled problem, as ``least_squares`` will look them up."""
    import solver

    objective, x0 = solver.problems.get(
        target.problem, target.size, deriv_mode=target.deriv_mode, jac_chunk_size=target.jac_chunk_size
    )
    kernels = solver.kernels(objective, x0)
    # "auto" probes were compiled while the objective was built: list them first, so the
    # builder claims them at once and a helping worker never rebuilds a target just for them.
    ordered = sorted(kernels, key=lambda k: not k.name.startswith("probe_"))
    return [KernelSpec(k.name, k.warm, f"jit_{k.fn.__name__}", lookup=functools.partial(_aot, k.fn, k.args, None))
            for k in ordered]


def bundled_kernel_count(target: Target) -> int:
    """How many kernels `bundled_kernels` lists for a target, without building it
    (building compiles the "auto" probes): residual, jacobian and iterate, plus
    the probes of each block whose chunk size is "auto" (``solver.kernels``).
    ``tests/test_warm.py`` pins it against the solver."""
    import solver
    from solver import memory

    objective, x0 = solver.problems.get(
        target.problem, target.size, deriv_mode=target.deriv_mode, jac_chunk_size=target.jac_chunk_size
    )
    if objective.deriv_mode == "batched":
        automatic = [objective.requested_jac_chunk_size == "auto"]
    else:  # blocked: each block's own size; None means "auto" there
        automatic = [o.jac_chunk_size in (None, "auto") for o in objective.objectives]
    return 3 + sum(automatic) * len(set(memory.probe_chunk_sizes(len(x0))))


def entry_kernels(entry: str) -> list[KernelSpec]:
    """Kernels from a user's ``pkg.module:function`` (see the README for the protocol).

    Raises:
        EntryError: the function returned no kernels, or something else than kernels.
        Exception: whatever importing the module or calling the function raised.
    """
    module_name, _, attr = entry.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise EntryError(f"{attr} is {type(obj).__name__}, not a function")
    items = obj()
    if isinstance(items, dict):
        items = [(name, *value) for name, value in items.items()]
    try:
        items = list(items)
    except TypeError:
        raise EntryError(f"returned {type(items).__name__}, not a list of (name, function, args)") from None
    if not items:
        raise EntryError("returned no kernels (an empty list)")
    out = []
    for i, item in enumerate(items):
        if all(hasattr(item, a) for a in ("name", "fn", "args")):  # solver.Kernel: fn is jitted here, as documented
            compile = functools.partial(_aot, item.fn, tuple(item.args), None)
            out.append(KernelSpec(str(item.name), compile, args=tuple(item.args), lookup=compile))
            continue
        if not isinstance(item, (tuple, list)) or not 2 <= len(item) <= 4:
            raise EntryError(f"item {i} is {type(item).__name__}, not (name, function, args[, kwargs])")
        if isinstance(item[0], str):
            if len(item) < 3:
                raise EntryError(f"item {i} ({item[0]!r}) has {len(item) - 1} value(s) after its name; "
                                 "give (name, function, args[, kwargs])")
            name, fn, args, *rest = item
        else:
            fn, args, *rest = item
            name = getattr(fn, "__name__", f"kernel{i}")
        if not callable(fn) or not isinstance(args, (tuple, list)):
            raise EntryError(f"item {i}: expected a function and a tuple of abstract arguments")
        if not hasattr(fn, "lower"):
            # A run never looks up a plain function by itself: it jits it with its own
            # options (static arguments, donation) or calls it inside another jit, so
            # a jit of it made here would be a guess.
            raise EntryError(f"item {i} ({name!r}): {getattr(fn, '__name__', type(fn).__name__)} is not jitted; "
                             "list the jax.jit function your code calls")
        kwargs = rest[0] if rest else None
        compile = functools.partial(_aot, fn, tuple(args), kwargs)
        out.append(KernelSpec(name, compile, args=(tuple(args), kwargs), lookup=compile))
    return _unique_names(out)


def _unique_names(kernels: list[KernelSpec]) -> list[KernelSpec]:
    """Numbers repeated names (``residual``, ``residual#2``, ...): workers claim kernels and
    verify counts hits by name, and one function warmed at several shapes is common."""
    taken = {k.name for k in kernels}
    seen: set[str] = set()
    for kernel in kernels:
        if kernel.name in seen:
            base, n = kernel.name, 2
            while f"{base}#{n}" in taken:  # an explicit "g#2" elsewhere in the list keeps its name
                n += 1
            kernel.name = f"{base}#{n}"
            taken.add(kernel.name)
        seen.add(kernel.name)
    return kernels


def _kernels_of(target: Target) -> list[KernelSpec]:
    return entry_kernels(target.entry) if target.entry else bundled_kernels(target)


# Keys this process wrote while building targets ("auto" probes), with JAX's compile time of each.
_BUILT: dict[str, float | None] = {}


def _build(target: Target) -> tuple[list[KernelSpec] | None, str | None]:
    try:
        with listening() as heard:
            kernels = _kernels_of(target)
        _BUILT.update(heard.writes)
        return kernels, None
    except Exception as error:  # a broken target must not stop the others
        return None, one_line(error)


def _compile(target: Target, kernel: KernelSpec) -> bool:
    """Compiles one kernel and reports it; returns whether it failed."""
    start = time.perf_counter()
    with listening() as heard:
        try:
            # A kernel the executable store serves says itself whether it was there.
            status = kernel.compile() or ("cached" if heard.hits and not heard.misses else "compiled")
            reason = None
        except Exception as e:  # report and go on with the others
            status, reason = "failed", one_line(e)
        if status == "compiled" and not heard.keys and kernel.lookup is not None:
            # Stored whole while its target was built: JAX's cache, asked the plain
            # way, names its entry (a hit: nothing is compiled again).
            try:
                kernel.lookup()
            except Exception:  # noqa: BLE001 (the key stays unknown; the kernel is warmed)
                pass
    keys = heard.keys
    built = [k for k in keys if k in _BUILT]
    if status == "cached" and built:
        status = "compiled"  # compiled by this warm, while its target was built
    seconds = [s for s in [*heard.writes.values(), *(_BUILT[k] for k in built if k not in heard.writes)]
               if s is not None]
    modules = sorted(heard.modules) or [kernel.module]
    _emit(target=target.label, kernel=kernel.name, module=modules[0] if len(modules) == 1 else ",".join(modules),
          status=status, wall_seconds=round(time.perf_counter() - start, 4),
          # as the write log rounds it, so that warm and `ls` print the same figure
          compile_seconds=round(sum(seconds), 3) if status == "compiled" and seconds else None,
          keys=keys if status != "failed" else [], reason=reason)
    warning = _x64_warning(kernel) if status != "failed" else None
    if warning:
        _emit(target=target.label, warning=f"{target.label}: {warning}")
    return status == "failed"


def _report_built(target: Target, kernels: list[KernelSpec] | None, error: str | None) -> bool:
    """Tells the parent how many kernels ``target`` has (a failed build counts as one, failed)."""
    _emit(target=target.label, kernels=len(kernels) if kernels is not None else 1)
    if kernels is None:
        _emit(target=target.label, kernel=None, module=None, status="failed", wall_seconds=0.0, reason=error)
    return kernels is None


def _run_shared(targets: list[Target], board: ClaimBoard) -> bool:
    """Claims targets and kernels on the board (see `claims`); returns whether anything failed."""
    failed = False
    others: dict[str, Target] = {}
    for target in targets:
        if not board.claim_build(target.label):
            others[target.label] = target
            continue
        kernels, error = _build(target)
        if _report_built(target, kernels, error):
            board.publish(target.label, None)
            failed = True
            continue
        assert kernels is not None
        # The first kernel is claimed before the list is published, so a target of one
        # kernel is never built a second time for nothing.
        first = bool(kernels) and board.claim_kernel(target.label, kernels[0].name)
        board.publish(target.label, [k.name for k in kernels])
        for i, kernel in enumerate(kernels):
            if first if i == 0 else board.claim_kernel(target.label, kernel.name):
                failed |= _compile(target, kernel)
    # Nothing left to build: help with the other workers' targets, from their ends.
    while others:
        found = board.wait_for_any(list(others))
        if found is None:
            break  # their builders died; the parent reports that
        label, published = found
        target = others.pop(label)
        if published.names is None or all(board.is_claimed(label, n) for n in published.names):
            continue
        kernels, _ = _build(target)  # a failure here is the builder's to report
        for kernel in reversed(kernels or []):
            if board.claim_kernel(label, kernel.name):
                failed |= _compile(target, kernel)
    return failed


def _run_split(targets: list[Target], worker: int, workers: int) -> bool:
    """Without a claims board: every worker builds every target and compiles
    every ``workers``-th kernel by number (worker 0 reports the builds)."""
    failed = False
    number = -1
    for target in targets:
        kernels, error = _build(target)
        if kernels is None:
            number += 1
            if number % workers == worker:
                failed |= _report_built(target, kernels, error)
            continue
        if worker == 0:
            _report_built(target, kernels, error)
        for kernel in kernels:
            number += 1
            if number % workers == worker:
                failed |= _compile(target, kernel)
    return failed


def run(job: dict[str, Any]) -> int:
    """Compiles this worker's share; returns 1 if anything failed."""
    import jax

    import jaxcache

    targets = [Target(**t) for t in job["targets"]]
    worker, workers = int(job["worker"]), int(job["workers"])
    x64 = {t.x64 for t in targets}
    if len(x64) == 1:
        jax.config.update("jax_enable_x64", x64.pop())
    jaxcache.configure(job["cache_dir"])
    board = ClaimBoard.open(job.get("claims")) if workers > 1 else None
    failed = _run_shared(targets, board) if board is not None else _run_split(targets, worker, workers)
    return 1 if failed else 0


def die_with_parent() -> None:
    """Linux: end when the warm that started us ends, however it ends (SIGTERM, SIGKILL);
    elsewhere a worker notices only when writing its next line to the closed pipe."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    die_with_parent()
    # Started with -P, so the installed packages are found, not folders of the same name
    # here. Imported before the user's folder joins the path (last, for --entry modules):
    # a namespace folder there would otherwise still win over an editable install's finder.
    import solver  # noqa: F401

    sys.path.append(os.getcwd())
    try:
        job = json.loads(sys.stdin.read())
        return run(job)
    except Exception:
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
