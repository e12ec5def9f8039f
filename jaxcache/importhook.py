"""Run a function once a module has been imported, now or whenever it is.

jaxcache hooks into modules it must not import itself: JAX in a ``jaxcache
run`` child that may never use it (importing JAX costs 0.6 s), and the
bundled ``solver``, which plugs the executable store in only when the program
imports it. `when_imported` calls back at once if the module is already
imported, else right after the module's own code has run, through a finder
on ``sys.meta_path`` that wraps the module's loader and then removes itself.

Standard library only: the ``jaxcache run`` bootstrap loads this file by path.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["when_imported"]

logger = logging.getLogger(__name__)
Callback = Callable[[ModuleType], None]

_lock = threading.RLock()


def when_imported(name: str, callback: Callback) -> None:
    """Calls ``callback(module)`` once module ``name`` is imported (at once if it already is).

    A callback that raises is logged at warning level; the import itself
    always succeeds as it would have without the hook.
    """
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            for finder in sys.meta_path:
                if isinstance(finder, _Watch) and finder.name == name:
                    finder.callbacks.append(callback)
                    return
            sys.meta_path.insert(0, _Watch(name, callback))
            return
    _call(callback, module)


def _call(callback: Callback, module: ModuleType) -> None:
    try:
        callback(module)
    except Exception as err:  # noqa: BLE001 (a hook must never break the program's import)
        logger.warning("jaxcache: hook on import of %s failed: %s: %s", module.__name__, type(err).__name__, err)


class _Watch:
    """A meta path finder (importlib's protocol; not importlib.abc's class, whose import costs
    5 ms in every process of a `jaxcache run`) that finds nothing itself: it wraps the
    loader the other finders return for one module name."""

    def __init__(self, name: str, callback: Callback) -> None:
        self.name = name
        self.callbacks = [callback]

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        with _lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            with _lock:
                sys.meta_path.insert(0, self)  # not importable now: perhaps later
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # a namespace package or an old-style loader: no hook (it has no code to wait for)
        spec.loader = _Loader(spec.loader, self.callbacks)
        return spec


class _Loader:
    """The module's own loader, then the callbacks."""

    def __init__(self, loader: Any, callbacks: list[Callback]) -> None:
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Later code (importlib.resources, reload) asks the loader for more: give them the real one.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        for callback in self._callbacks:
            _call(callback, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
