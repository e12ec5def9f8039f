"""A pytest plugin: ``pytest --jaxcache[=DIR]`` gives a JAX test suite the persistent cache.

Registered through the ``pytest11`` entry point and off unless asked. It sets
the cache through the environment (so pytest-xdist workers and subprocesses
inherit it) and through ``jaxcache.configure``, makes entry writes atomic so
that workers sharing one folder never read each other's half-written entries
(jax#22718), and adds the session's persistent-cache hits and misses, summed
over workers, to the terminal summary.

What it changes in JAX's global config, once, before any test runs (and in
the environment as ``JAX_<NAME>``, for workers and subprocesses):

- ``jax_compilation_cache_dir``: the version folder of the cache;
- ``jax_persistent_cache_min_compile_time_secs``: 0 (JAX's default is 1.0),
  or the configured value;
- ``jax_persistent_cache_min_entry_size_bytes``: 0, JAX's own default, or the
  configured value;
- ``jax_persistent_cache_enable_xla_caches``: ``none`` without a GPU plugin
  (so a copied cache still hits before jax 0.11), else JAX's default;
- ``jax_compilation_cache_max_size``: only when a size cap is configured.

A suite that checks JAX's global config around each test (JAX's own
``JaxTestCase`` does) sees these as its starting values and stays green:
none of them is one JAX itself rewrites while a test runs. Beyond config, it
replaces ``LRUCache.put`` with an atomic equivalent (see
`jaxcache.jaxinternals.install_atomic_put`) and observes, without changing,
the DEBUG records of JAX's cache loggers (see `jaxcache.compilelog`).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

_KEY = "jaxcache"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jaxcache", "JAX persistent compilation cache")
    group.addoption(
        "--jaxcache", nargs="?", const="", default=None, metavar="DIR",
        help="Use JAX's persistent compilation cache (at DIR, or jaxcache's configured folder).",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """``pytest --jaxcache tests/``: the folder is what to test, not where to cache.

    An option with an optional value takes the next word, so a bare ``--jaxcache``
    followed by a test path is rewritten, before pytest parses its options, to
    ``--jaxcache=`` (the configured folder) and the path stays a path.
    """
    rewritten = False
    for i, arg in enumerate(args[:-1]):
        if arg == "--jaxcache" and _names_tests(args[i + 1]):
            args[i] = "--jaxcache="
            rewritten = True
    if rewritten:
        # pytest parsed the arguments once already, to find the initial conftests
        # (a sub/conftest.py adding options): parse them again as rewritten.
        import copy

        try:
            confcutdir = early_config.known_args_namespace.confcutdir
            early_config.known_args_namespace = parser.parse_known_args(args, namespace=copy.copy(early_config.option))
            if early_config.known_args_namespace.confcutdir is None:
                early_config.known_args_namespace.confcutdir = confcutdir
        except AttributeError:
            pass  # another pytest: its conftests are found from the rootdir, the rest still works


def _names_tests(word: str) -> bool:
    """Whether a command-line word names tests (a test file, a node id, a folder holding tests)."""
    from pathlib import Path

    if word.startswith("-"):
        return False
    if "::" in word:
        return True
    path = Path(word)
    if path.is_file():
        return path.suffix == ".py"
    if not path.is_dir() or any(path.glob("jaxlib-*")) or (path / ".jaxcache").exists():
        return False  # a cache folder (or not a folder at all)
    # Tests sit near the top of what is named; a bounded walk keeps a big folder cheap.
    for visited, (_, subfolders, files) in enumerate(os.walk(path)):
        if visited > 200:
            break
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("node_modules", "site-packages")]
        if any(f.endswith(".py") and (f.startswith("test_") or f.endswith("_test.py") or f == "conftest.py")
               for f in files):
            return True
    return False


def _enabled(config: pytest.Config) -> bool:
    return config.getoption("jaxcache", default=None) is not None


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        return
    from jaxcache.compilelog import CompileLog
    from jaxcache.configuration import cache_env, configure, prepare_folder
    from jaxcache.errors import JaxCacheError
    from jaxcache.settings import resolve

    from jaxcache import keyparts

    try:
        settings = resolve(cache_dir=config.getoption("jaxcache") or None, argument_source="--jaxcache")
        if settings.url:  # a bucket as the cache: JAX reads and writes it directly (jaxcache.bucket)
            configured = configure(settings.url)
            os.environ.update({"JAXCACHE_DIR": settings.url, **{name.upper(): str(value) for name, value in
                                                                configured.jax_options.items() if value != -1}})
            config.stash[_root_key] = None  # nothing to explain from: no key parts are recorded there
        else:
            jax_dir, _ = prepare_folder(settings)
            os.environ.update(cache_env(settings, jax_dir))  # xdist workers and subprocesses
            # The session and its xdist workers are one run for `jaxcache explain` (set before configure()).
            if keyparts.RUN_ID_ENV not in os.environ:
                os.environ[keyparts.RUN_ID_ENV] = keyparts.new_run_id()
                keyparts.start_run(settings.root, os.environ[keyparts.RUN_ID_ENV],
                                   ["pytest", *config.invocation_params.args])
            config.stash[_root_key] = settings.root
            configure(settings.root)  # atomic writes included
    except JaxCacheError as e:
        raise pytest.UsageError(f"--jaxcache: {e}") from None
    config.stash[_log_key] = CompileLog().start()
    config.stash[_totals_key] = {}


_log_key = pytest.StashKey[Any]()
_root_key = pytest.StashKey[Any]()
_totals_key = pytest.StashKey[dict[str, int]]()


def _add(totals: dict[str, int], modules: dict[str, dict[str, float]]) -> None:
    for counts in modules.values():
        for name in ("requests", "hits", "misses", "writes"):
            totals[name] = totals.get(name, 0) + int(counts.get(name, 0))


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not _enabled(config):
        return
    log = config.stash[_log_key]
    log.stop()
    if hasattr(config, "workeroutput"):  # an xdist worker: hand the counts to the controller
        config.workeroutput[_KEY] = log.snapshot()
    else:
        _add(config.stash[_totals_key], log.snapshot())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    modules = getattr(node, "workeroutput", {}).get(_KEY)
    if modules:
        _add(node.config.stash[_totals_key], modules)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _enabled(config) or hasattr(config, "workeroutput"):
        return
    totals = config.stash[_totals_key]
    requests = totals.get("requests", 0)
    rate = f" ({100 * totals.get('hits', 0) / requests:.0f}% hit)" if requests else ""
    terminalreporter.write_sep("-", "jaxcache")
    terminalreporter.write_line(
        f"persistent compilation cache {os.environ.get('JAX_COMPILATION_CACHE_DIR', '')}: "
        f"{requests} compile requests, {totals.get('hits', 0)} hits, {totals.get('misses', 0)} misses{rate}, "
        f"{totals.get('writes', 0)} entries written"
    )
    if totals.get("misses", 0):
        for line in _why_lines(config):
            terminalreporter.write_line(line)


def _why_lines(config: pytest.Config, limit: int = 10) -> list[str]:
    """"Why it compiled": this session's misses, explained (`jaxcache explain --run RUN` for all)."""
    from jaxcache import keyparts
    from jaxcache.errors import JaxCacheError
    from jaxcache.explain import explain_run, short_lines

    run = os.environ.get(keyparts.RUN_ID_ENV)
    if config.stash[_root_key] is None:
        return []
    try:
        explained = explain_run(config.stash[_root_key], run).explanations if run else ()
    except (JaxCacheError, OSError, KeyError):
        return []
    if not explained:
        return []
    return (["why it compiled:"] + [f"  {line}" for line in short_lines(explained, limit=limit)]
            + [f"  (all of them: `jaxcache explain --run {run}`)"])
