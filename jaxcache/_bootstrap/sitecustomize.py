"""Loaded at start-up by every Python process under ``jaxcache run`` (through PYTHONPATH).

Standard library only, and cheap: the child may be another interpreter
without jaxcache installed, and most processes in a job never import JAX.

1. Runs the ``sitecustomize`` this one shadows, if there is one.
2. Points JAX at the version folder of *this* interpreter's jaxlib (the
   parent guessed from its own), creating the folder's provenance marker.
3. Taps JAX's cache log records: appends each hit, miss, write and compile
   time to ``$JAXCACHE_RUN_STATS`` as it happens, and records each entry
   written (platform, compile time) as ``jaxcache.configure`` does.
4. As ``jaxcache.configure`` does, and only once the program imports them:
   makes JAX's entry writes atomic, and plugs the executable store into the
   bundled solver.
"""

import os
import sys


def _chain_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    import importlib.util

    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_jaxcache_chained_sitecustomize", candidate)
            if spec and spec.loader:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


# Loaded by path in this order: each may use those before it (see their module headers).
_MODULES = ("atomic", "jaxformat", "uses", "importhook", "jaxinternals", "compilelog", "provenance", "keyparts")


def _load(name: str):
    if "_jaxcache_bootstrap_" + name in sys.modules:
        return sys.modules["_jaxcache_bootstrap_" + name]
    for before in _MODULES[: _MODULES.index(name)]:
        _load(before)
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name + ".py")
    spec = importlib.util.spec_from_file_location("_jaxcache_bootstrap_" + name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def _point_at_own_version() -> None:
    root = os.environ.get("JAXCACHE_DIR")
    if not root or os.environ.get("JAXCACHE_LAYOUT", "versioned") != "versioned":
        return
    provenance = _load("provenance")
    versions = provenance.installed_versions()
    if versions is None:
        return
    from pathlib import Path

    if provenance.read_marker(Path(root)) is not None:
        return  # the root is itself a version folder (`jaxcache dir --jax`): never nest another
    folder = provenance.version_dir(Path(root), versions.jaxlib)
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") != str(folder) or provenance.read_marker(folder) != versions:
        try:
            provenance.ensure_version_dir(Path(root), versions)
            os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
        except OSError:
            pass  # leave JAX where the parent pointed it


def _record_stats() -> None:
    path = os.environ.get("JAXCACHE_RUN_STATS")
    if not path:
        return
    compilelog = _load("compilelog")
    import json
    import time

    def append(kind: str, module: str, value) -> None:
        # One line per event, appended at once: a process killed by a signal (a job at
        # its time limit) has already told what it hit, which an exit handler would not.
        record = {"pid": os.getpid(), "event": kind, "module": module, "value": value, "time": time.time()}
        if kind == compilelog.WRITE:
            record["folder"] = compilelog.jax_cache_folder()  # where to look for the entry
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
            finally:
                os.close(fd)
        except OSError:
            pass

    compilelog.listen(append)
    if os.environ.get("JAXCACHE_DIR"):
        compilelog.listen(_load("provenance").WriteRecorder())
        keyparts = _load("keyparts")
        if keyparts.recording_enabled():
            keyparts.KeyPartsRecorder().install()  # the run's id comes from JAXCACHE_RUN_ID


def _plug_solver(store_module) -> None:
    from jaxcache import executables  # the package itself: the solver is installed with it

    store_module.set_kernel_store(executables.STORE)


def _configure_on_import() -> None:
    if not os.environ.get("JAXCACHE_DIR"):
        return
    importhook = _load("importhook")
    jaxinternals = _load("jaxinternals")
    jaxinternals.install_atomic_put_on_import()
    importhook.when_imported("solver.store", _plug_solver)


try:
    _chain_sitecustomize()
finally:
    try:
        _point_at_own_version()
        _record_stats()
        _configure_on_import()
    except Exception as error:  # never break the user's program
        # Said at exit, and only by a process that used JAX: a job's other Pythons
        # (a system interpreter running a helper script) have nothing to count.
        def _explain(error: Exception = error) -> None:
            if "jax" in sys.modules:
                sys.stderr.write(f"jaxcache run: this process's cache use was not counted "
                                 f"({type(error).__name__}: {error})\n")

        import atexit

        atexit.register(_explain)
