"""``jaxcache.configure()``: hand JAX the cache folder and thresholds before it compiles."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxcache import jaxformat, provenance
from jaxcache.errors import CacheDirError, JaxCacheError
from jaxcache.settings import Layout, Settings, resolve

if TYPE_CHECKING:
    from collections.abc import Callable

    from jaxcache.bucket import BucketCache, UseRecorder

# GPU plugins (jax-cuda12-plugin, jax-cuda13-plugin, jax-rocm*) install into the
# jax_plugins namespace package, or as jax_cuda*/jax_rocm* packages.
_GPU_PLUGIN_MODULES = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin")


@dataclass(frozen=True)
class Configured:
    """What :func:`configure` set.

    Attributes:
        root: the cache root (absolute, resolved), or its URL in an object store.
        jax_dir: the folder JAX writes into (a version folder of ``root``, or ``root``), or its URL.
        settings: every setting with its source.
        jax_options: the ``jax.config`` options set, by name.
        versions: the jax/jaxlib versions that will write entries.
    """

    root: Path | str
    jax_dir: Path | str
    settings: Settings
    jax_options: dict[str, Any]
    versions: provenance.VersionInfo | None


def gpu_plugin_installed() -> bool:
    """Whether a GPU plugin for jaxlib is installed (so XLA's GPU sub-caches matter).

    Looks the modules up without importing them: the hook must stay fast.
    """
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in _GPU_PLUGIN_MODULES)


JAX_DEFAULT_XLA_CACHES = "xla_gpu_per_fusion_autotune_cache_dir"


def resolve_xla_caches(setting: str, layout: str = "versioned") -> str:
    """What ``auto`` means for ``jax_persistent_cache_enable_xla_caches``.

    XLA's GPU sub-caches put the folder's path into every key (on CPU too,
    where they do nothing else), so a moved or copied cache would miss:
    ``none`` without a GPU plugin. But a different setting is a different
    key, so in the ``flat`` layout, a folder shared with processes that set
    JAX up by hand, ``auto`` keeps JAX's default and their entries are hit.
    """
    if setting != "auto":
        return setting
    return JAX_DEFAULT_XLA_CACHES if gpu_plugin_installed() or layout == "flat" else "none"


def jax_options(settings: Settings, jax_dir: Path) -> dict[str, Any]:
    """The ``jax.config`` options (and their values) that make JAX use this cache.

    "Keep every entry" (-1) is given to JAX as 0, its own default, which keeps
    every entry too (`jaxinternals.MIN_ENTRY_SIZE_KEEPS_ALL`): JAX rewrites a 0
    threshold globally when it opens its cache, and a test suite that checks
    JAX's global config after each test (JAX's own) would see -1 turn into 0.
    """
    from jaxcache import jaxinternals  # here, not at import: `jaxcache hook` must start fast

    min_entry = settings.min_entry_size_bytes.value
    return {
        "jax_compilation_cache_dir": str(jax_dir),
        "jax_persistent_cache_min_entry_size_bytes": jaxinternals.MIN_ENTRY_SIZE_KEEPS_ALL if min_entry == -1
        else min_entry,
        "jax_persistent_cache_min_compile_time_secs": settings.min_compile_time_secs.value,
        "jax_compilation_cache_max_size": settings.max_size.value,
        "jax_persistent_cache_enable_xla_caches": resolve_xla_caches(settings.xla_caches.value,
                                                                     settings.layout.value),
    }


def cache_env(settings: Settings, jax_dir: Path) -> dict[str, str]:
    """The environment variables that make any JAX process use this cache."""
    env = {"JAXCACHE_DIR": str(settings.root), "JAXCACHE_LAYOUT": settings.layout.value}
    for name, value in jax_options(settings, jax_dir).items():
        if name == "jax_compilation_cache_max_size" and value == -1:
            continue
        env[name.upper()] = str(value)
    return env


def prepare_folder(settings: Settings) -> tuple[Path, provenance.VersionInfo | None]:
    """Creates the cache root (and version folder) and returns the folder JAX must use.

    Raises:
        CacheDirError: the folder cannot be created or written.
        NotACacheError: the folder holds other files and is not a cache (`jaxcache init` makes it one).
    """
    root = settings.root
    versions = provenance.installed_versions()
    from jaxcache.scanning import require_cache_or_new

    require_cache_or_new(root)  # never a home folder given by mistake; `jaxcache init` marks one on purpose
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not root.is_dir():
            raise CacheDirError(f"{root} is a file, not a folder")
        target = provenance.jax_dir(root, settings.layout.value, versions)
        if target != root and versions is not None:
            created = not target.exists()
            provenance.ensure_version_dir(root, versions)
            from jaxcache.security import SHARED_MODE, shared_info

            if created and shared_info(root) is not None:
                target.chmod(SHARED_MODE)  # a team cache: the group writes here too
    except FileExistsError:
        raise CacheDirError(f"{root} is a file, not a folder") from None
    except PermissionError as e:
        raise CacheDirError(f"permission denied: cannot create the cache folder {e.filename or root}") from None
    except OSError as e:
        raise CacheDirError(f"cannot create the cache folder {root}: {e.strerror}") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise CacheDirError(f"permission denied: JAX cannot write to {target}")
    if settings.max_size.value != -1 and jaxformat.missing_atime_breaks_writes(versions.jaxlib if versions else None):
        from jaxcache.atimes import ensure_atimes

        ensure_atimes(target)  # entries written before the cap was set would make JAX's writes fail
    return target, versions


def configure(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    max_size: int | str | None = None,
    min_entry_size_bytes: int | None = None,
    min_compile_time_secs: float | None = None,
    layout: Layout | None = None,
    xla_caches: str | None = None,
    atomic_writes: bool = True,
    strict: bool | None = None,
) -> Configured:
    """Points JAX's persistent compilation cache at a folder, keeping every entry.

    Replaces the usual three ``jax.config.update`` lines. Call it before the
    first ``jax.jit`` call: JAX fixes the folder when it first uses the cache.

    Args:
        cache_dir: the cache root; by default from ``JAXCACHE_DIR``,
            ``JAX_COMPILATION_CACHE_DIR``, ``[tool.jaxcache]`` in ``pyproject.toml``,
            the user config file, or the platformdirs user cache folder.
        max_size: a size cap ("2GB" or bytes) enforced by JAX's own LRU eviction; -1 for none.
        min_entry_size_bytes: JAX's size threshold (default -1: keep everything,
            given to JAX as its own default 0, which keeps everything too).
        min_compile_time_secs: JAX's compile-time threshold (default 0: keep everything).
        layout: "versioned" (default) or "flat"; see :mod:`jaxcache.provenance`.
        xla_caches: ``jax_persistent_cache_enable_xla_caches``; "auto" by default.
        atomic_writes: make JAX write each entry (and, in a capped cache, its
            ``-atime``) to a temporary file and rename it into place, so no
            process ever reads, and no crash ever leaves, a half-written entry
            (see `jaxcache.jaxinternals.install_atomic_put`).
        strict: refuse a folder others can write to instead of warning
            (default from the ``strict`` setting).

    Returns:
        What was set, as a :class:`Configured`.

    Raises:
        UsageError: a bad setting anywhere in the resolution chain.
        CacheDirError: the folder cannot be created or written, or (strict mode)
            others can write to it.

    Example:
        >>> import jaxcache
        >>> jaxcache.configure()  # doctest: +SKIP
    """
    from jaxcache import jaxinternals  # here, not at import: `jaxcache hook` must start fast

    settings = resolve(
        cache_dir=cache_dir,
        max_size=max_size,
        min_entry_size_bytes=min_entry_size_bytes,
        min_compile_time_secs=min_compile_time_secs,
        layout=layout,
        xla_caches=xla_caches,
        strict=strict,
    )
    for note in settings.skipped:
        warnings.warn(f"jaxcache: {note}", stacklevel=2)
    if settings.url:
        return _configure_bucket(settings)
    target, versions = prepare_folder(settings)
    from jaxcache.security import enforce

    enforce(settings.root, strict=settings.strict.value, stacklevel=3, jax_dir=target)

    import jax

    _warn_if_already_used(target)
    applied = _apply(jax_options(settings, target))
    _install_provenance_recorder()
    if atomic_writes:
        jaxinternals.install_atomic_put()
    from jaxcache import executables

    executables.plug_into_solver()
    return Configured(root=settings.root, jax_dir=target, settings=settings, jax_options=applied, versions=versions)


def bucket_jax_dir(settings: Settings, versions: provenance.VersionInfo | None) -> str:
    """The URL JAX writes into for a cache in a bucket: a version folder, as for a local root."""
    assert settings.url is not None
    if settings.layout.value == "versioned" and versions is not None:
        return f"{settings.url}/{provenance.VERSION_DIR_PREFIX}{versions.jaxlib}"
    return settings.url


def bucket_jax_options(settings: Settings, jax_dir: str) -> dict[str, Any]:
    """The ``jax.config`` options for a cache in a bucket: XLA's sub-caches off, never a size cap."""
    return {**jax_options(settings, Path(jax_dir)), "jax_compilation_cache_dir": jax_dir,
            "jax_compilation_cache_max_size": -1, "jax_persistent_cache_enable_xla_caches": "none"}


def _configure_bucket(settings: Settings) -> Configured:
    """Points JAX straight at an object store (``s3://``, ``gs://``): every hit a GET, every write a PUT.

    The trade-off (docs/fleet.md): no local copy, so each process pays a round
    trip per kernel, and many nodes at once meet the store's rate limits; a
    local cache with ``jaxcache pull``/``push`` around it is faster wherever a
    node has a disk. XLA's sub-caches cannot write to a URL, so they are off;
    JAX's size cap cannot work there (its lock is a local file), so it is refused.

    Raises:
        UsageError: a size cap given as an argument (one from a file or the environment is left out, with a warning).
        MissingExtra: s3fs or gcsfs missing.
        CacheDirError: etils (JAX's way to a URL) missing, or the prefix holds other things.
        RemoteError: the bucket is missing or unreachable.
    """
    from jaxcache.bucket import BucketCache
    from jaxcache.errors import UsageError

    url = settings.url
    assert url is not None
    if settings.max_size.value != -1:
        why = (f"JAX's eviction there locks a local file no other node sees and lists the whole bucket on every "
               f"write; run `jaxcache --cache-dir {url} prune --max-size SIZE` from one place instead")
        if settings.max_size.source == "argument":
            raise UsageError(f"refusing max_size for {url}: {why}")
        # A cap set for local caches (a config file, the environment) is left out here, not an error.
        warnings.warn(f"jaxcache: max_size from {settings.max_size.source} is not applied to {url}: {why}",
                      stacklevel=3)
    try:
        from etils import epath  # noqa: F401 (JAX reaches a URL only through it: jax/_src/path.py)
    except ImportError:
        raise CacheDirError(f"JAX reaches {url.split('://')[0]}:// only through etils: "
                            "pip install 'etils[epath]'") from None
    if settings.xla_caches.value not in ("auto", "none"):
        warnings.warn(f"jaxcache: xla_caches={settings.xla_caches.value!r} is turned off: XLA's sub-caches cannot "
                      f"write to {url}", stacklevel=3)
    bucket = BucketCache(url)
    bucket.require_cache_or_new()
    versions = provenance.installed_versions()
    # A root that is itself a marked version folder is used as it is, never nested (as locally).
    target = url if bucket.is_version_folder() else bucket_jax_dir(settings, versions)
    bucket.require_not_fleet_remote(target)
    if target != url and versions is not None:
        bucket.ensure_version_folder(versions)
    _warn_if_already_used(target)
    applied = _apply(bucket_jax_options(settings, target))
    _record_bucket_uses(bucket)
    return Configured(root=url, jax_dir=target, settings=settings, jax_options=applied, versions=versions)


def _apply(options: dict[str, Any]) -> dict[str, Any]:
    """Sets each ``jax.config`` option; returns those set (one this JAX lacks is a warning, not an error)."""
    import jax

    from jaxcache import jaxinternals

    applied: dict[str, Any] = {}
    for name, value in options.items():
        try:
            jax.config.update(name, value)  # each exists from jax 0.6.1 on (tests/test_jaxinternals.py)
        except AttributeError:
            jaxinternals.feature_off(f"setting {name}={value!r}", "this JAX has no such option")
            continue
        applied[name] = value
    return applied


_bucket_uses: UseRecorder | None = None  # this process's recorder, for the bucket configured last
_stop_bucket_uses: Callable[[], None] | None = None


def _record_bucket_uses(bucket: BucketCache) -> None:
    """One use recorder per process, written at exit (or when another bucket is configured)."""
    global _bucket_uses, _stop_bucket_uses
    from jaxcache import compilelog
    from jaxcache.bucket import UseRecorder

    if _bucket_uses is not None and _bucket_uses.bucket.url == bucket.url:
        return
    if _bucket_uses is None:
        import atexit

        atexit.register(lambda: _bucket_uses.flush() if _bucket_uses is not None else None)
    else:
        if _stop_bucket_uses is not None:
            _stop_bucket_uses()
        _bucket_uses.flush()
    _bucket_uses = UseRecorder(bucket)
    _stop_bucket_uses = compilelog.listen(_bucket_uses)


def _warn_if_already_used(target: Path | str) -> None:
    """JAX fixes the folder at its first cached compile: say so, and let it re-open."""
    from jaxcache import jaxinternals  # here, not at import: `jaxcache hook` must start fast

    state = jaxinternals.cache_state()
    if state is None:
        return
    if state.opened is not None:
        same = str(state.opened).rstrip("/") == target if isinstance(target, str) else Path(state.opened) == target
        if not same:
            warnings.warn(
                f"jaxcache.configure() called after JAX opened its cache at {state.opened}; "
                f"switching to {target} for compilations from now on",
                stacklevel=3,
            )
            jaxinternals.reset_cache()
    elif state.checked:
        warnings.warn(
            "jaxcache.configure() called after JAX already compiled something: "
            "programs compiled before it are not in the persistent cache; call it before the first jit",
            stacklevel=3,
        )


_recorder: provenance.WriteRecorder | None = None


def _install_provenance_recorder() -> None:
    """Records, from JAX's log records, each entry written, each use, and what each key is made of."""
    from jaxcache import compilelog, keyparts

    global _recorder
    if _recorder is None:
        _recorder = provenance.WriteRecorder()
        compilelog.listen(_recorder)
        if keyparts.recording_enabled():
            keyparts.KeyPartsRecorder().install()


__all__ = ["Configured", "configure", "JaxCacheError"]
