"""A warm worker: one process configured like a real run, compiling its share of kernels.

Run as ``python -m jaxcache.warming.worker`` with a JSON job on stdin::

    {"cache_dir": ..., "targets": [Target.as_dict(), ...], "worker": j, "workers": J, "claims": DIR}

Every target of a job shares one process configuration (backend, device
count, x64), set up by the parent through the environment before JAX starts,
exactly as the run it prepares. Kernels are numbered in a fixed order; the
workers claim them one by one in the ``claims`` folder (without one, this
worker compiles those whose number is ``j`` modulo ``J``). One JSON line per
event goes to stdout: ``{"total": n}`` once the kernels are known, then one
``{"target", "kernel", "module", "status", "seconds", "reason"}`` per kernel,
``status`` being ``compiled``, ``cached`` or ``failed``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from jaxcache.warming.plan import Target


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class KernelSpec:
    """One kernel to compile: a name, how to compile it, and its module name if known.

    ``compile`` returns ``"cached"`` or ``"compiled"`` when it knows (the
    executable store), else anything, and JAX's log of the compile decides.
    """

    def __init__(self, name: str, compile: Callable[[], Any], module: str | None = None):
        self.name = name
        self.compile = compile
        self.module = module


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
    return [KernelSpec(k.name, k.warm, f"jit_{k.fn.__name__}") for k in solver.kernels(objective, x0)]


def entry_kernels(entry: str) -> list[KernelSpec]:
    """Kernels from a user's ``pkg.module:function`` (see the README for the protocol).

    Raises:
        ValueError: the function returned something that is not a list of kernels.
    """
    module_name, _, attr = entry.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{entry} is not callable")
    items = obj()
    if isinstance(items, dict):
        items = [(name, *value) for name, value in items.items()]
    try:
        items = list(items)
    except TypeError:
        raise ValueError(f"{entry} returned {type(items).__name__}, not a list of (name, function, args)") from None
    out = []
    for i, item in enumerate(items):
        if all(hasattr(item, a) for a in ("name", "fn", "args")):
            out.append(KernelSpec(str(item.name), functools.partial(_aot, item.fn, tuple(item.args), None)))
            continue
        if not isinstance(item, (tuple, list)) or not 2 <= len(item) <= 4:
            raise ValueError(f"{entry} item {i} is {type(item).__name__}, not (name, function, args[, kwargs])")
        if isinstance(item[0], str):
            name, fn, args, *rest = item
        else:
            fn, args, *rest = item
            name = getattr(fn, "__name__", f"kernel{i}")
        if not callable(fn) or not isinstance(args, (tuple, list)):
            raise ValueError(f"{entry} item {i}: expected a function and a tuple of abstract arguments")
        out.append(KernelSpec(name, functools.partial(_aot, fn, tuple(args), rest[0] if rest else None)))
    return out


def _kernels_of(target: Target) -> list[KernelSpec]:
    return entry_kernels(target.entry) if target.entry else bundled_kernels(target)


def _jobs(targets: list[Target]) -> Iterator[tuple[Target, list[KernelSpec] | None, str | None]]:
    for target in targets:
        try:
            yield target, _kernels_of(target), None
        except Exception as error:  # a broken target must not stop the others
            yield target, None, _one_line(error)


def _claimer(claims: str | None, worker: int, workers: int) -> Callable[[int, str], bool]:
    """Decides which kernels this worker compiles: ``claim(number, name)``.

    With a claims folder, workers take kernels first come, first served: an
    ``O_EXCL`` create per kernel *name* (target and kernel), so exactly one
    worker wins each even if the workers' lists differ, and one that drew
    cheap kernels goes on to the next instead of idling. Without a folder, or
    if it cannot be written, every ``workers``-th kernel by number.
    """

    def by_number(number: int, name: str) -> bool:
        return number % workers == worker

    if claims is None or workers < 2:
        return by_number

    def claim(number: int, name: str) -> bool:
        path = os.path.join(claims, hashlib.sha256(name.encode()).hexdigest()[:32])
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        except OSError:
            return by_number(number, name)  # a claims folder gone or full: fall back to the fixed split
        return True

    return claim


def run(job: dict[str, Any]) -> int:
    """Compiles this worker's share; returns 1 if anything failed."""
    import jax

    import jaxcache
    from jaxcache.compilelog import CompileLog

    targets = [Target(**t) for t in job["targets"]]
    worker, workers = int(job["worker"]), int(job["workers"])
    x64 = {t.x64 for t in targets}
    if len(x64) == 1:
        jax.config.update("jax_enable_x64", x64.pop())
    jaxcache.configure(job["cache_dir"])
    failed = False
    claim = _claimer(job.get("claims"), worker, workers)
    built = list(_jobs(targets))
    _emit(total=sum(len(k) if k is not None else 1 for _, k, _ in built))
    number = -1
    for target, kernels, error in built:
        if kernels is None:
            number += 1
            if claim(number, f"{target.label}\0<build>"):
                _emit(target=target.label, kernel=None, module=None, status="failed", seconds=0.0, reason=error)
                failed = True
            continue
        for kernel in kernels:
            number += 1
            if not claim(number, f"{target.label}\0{kernel.name}"):
                continue
            log = CompileLog().start()
            start = time.perf_counter()
            try:
                # A kernel the executable store serves says itself whether it was there.
                status = kernel.compile() or ("cached" if log.hits and not log.misses else "compiled")
                reason = None
            except Exception as e:  # report and go on with the others
                status, reason = "failed", _one_line(e)
                failed = True
            finally:
                log.stop()
            modules = sorted(log.modules) or [kernel.module]
            _emit(target=target.label, kernel=kernel.name, module=modules[0] if len(modules) == 1 else ",".join(modules),
                  status=status, seconds=round(time.perf_counter() - start, 4), reason=reason)
    return 1 if failed else 0


def main() -> int:
    try:
        job = json.loads(sys.stdin.read())
        return run(job)
    except Exception:
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
