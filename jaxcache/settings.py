"""Which cache settings are in force, and where each one came from.

Resolution order, highest first: explicit arguments (or CLI flags), the
environment (``JAXCACHE_DIR``, then JAX's own ``JAX_COMPILATION_CACHE_DIR``),
a ``[tool.jaxcache]`` table in the nearest ``pyproject.toml``, the user config
file (``<platformdirs user config dir>/jaxcache/config.toml``), and defaults
(``platformdirs.user_cache_path("jaxcache")``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import platformdirs

from jaxcache.errors import CacheDirError, UsageError
from jaxcache.units import parse_size

Layout = Literal["versioned", "flat"]
XlaCaches = Literal["auto", "none", "all"]

# One environment variable per setting; the cache folder also honours JAX's own.
ENV_VARS: dict[str, tuple[str, ...]] = {
    "cache_dir": ("JAXCACHE_DIR", "JAX_COMPILATION_CACHE_DIR"),
    "max_size": ("JAXCACHE_MAX_SIZE",),
    "min_entry_size_bytes": ("JAXCACHE_MIN_ENTRY_SIZE_BYTES",),
    "min_compile_time_secs": ("JAXCACHE_MIN_COMPILE_TIME_SECS",),
    "layout": ("JAXCACHE_LAYOUT",),
    "xla_caches": ("JAXCACHE_XLA_CACHES",),
    "strict": ("JAXCACHE_STRICT",),
    "remote": ("JAXCACHE_REMOTE",),
}
# Keys of the config file / [tool.jaxcache] table, and the setting each sets.
CONFIG_KEYS: dict[str, str] = {
    "dir": "cache_dir",
    "max_size": "max_size",
    "min_entry_size_bytes": "min_entry_size_bytes",
    "min_compile_time_secs": "min_compile_time_secs",
    "layout": "layout",
    "xla_caches": "xla_caches",
    "strict": "strict",
    "remote": "remote",
}
# Sub-tables of [tool.jaxcache] that belong to other commands.
_OTHER_TABLES = frozenset({"warm"})
# The flags jax_persistent_cache_enable_xla_caches may list (jax/_src/compiler.py).
_XLA_CACHE_FLAGS = frozenset({"xla_gpu_kernel_cache_file", "xla_gpu_per_fusion_autotune_cache_dir"})


@dataclass(frozen=True)
class Setting:
    """One setting's value and a short description of where it came from."""

    value: Any
    source: str


@dataclass(frozen=True)
class Settings:
    """Every setting jaxcache hands to JAX, each with its source.

    Attributes:
        cache_dir: the cache root (absolute, symlinks resolved), or an object store's URL (``s3://bucket/prefix``).
        max_size: size cap in bytes for JAX's LRU eviction, -1 for none.
        min_entry_size_bytes: JAX's threshold; -1 keeps every entry.
        min_compile_time_secs: JAX's threshold; 0 keeps every entry.
        layout: "versioned" writes into a subfolder per jaxlib version (provenance
            known); "flat" writes into the root as plain JAX does.
        xla_caches: value for ``jax_persistent_cache_enable_xla_caches``; "auto"
            turns XLA's GPU sub-caches off when no GPU plugin is installed, which
            takes the folder's path out of every key.
        strict: refuse (rather than warn about) a folder others can write to.
        remote: where ``jaxcache hook`` pulls from before a job (a shared folder, ``s3://``, ``gs://``); None for none.
    """

    cache_dir: Setting
    max_size: Setting
    min_entry_size_bytes: Setting
    min_compile_time_secs: Setting
    layout: Setting
    xla_caches: Setting
    strict: Setting
    remote: Setting
    # What could not be used from config files, and was left out (one line each, for a warning).
    skipped: tuple[str, ...] = ()

    @property
    def url(self) -> str | None:
        """The cache's URL when it is kept in an object store (``s3://bucket/prefix``), else None."""
        value = self.cache_dir.value
        return value if isinstance(value, str) else None

    @property
    def root(self) -> Path:
        """The local cache root.

        Raises:
            ObjectStoreCacheError: the cache is in an object store, which this command cannot use.
        """
        value = self.cache_dir.value
        if isinstance(value, str):
            raise ObjectStoreCacheError(
                f"{value} is an object store: this command needs a local folder (inspect, ls, prune, clear, check "
                "and jaxcache.configure() work on a bucket; push and pull layer a local cache over one)"
            )
        return value

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {
            f.name: {"value": _jsonable(getattr(self, f.name).value), "source": getattr(self, f.name).source}
            for f in fields(self) if f.name != "skipped"
        }


def refuse_one_slash_url(raw: str) -> None:
    """Refuses ``s3:/bucket/x`` (one slash), which would silently be a local folder named ``s3:``.

    Raises:
        UsageError: ``raw`` starts with a URL scheme jaxcache knows, followed by one slash.
    """
    text = raw.strip()
    scheme, colon, rest = text.partition(":")
    if colon and scheme.lower() in (*OBJECT_STORE_SCHEMES, "gcs") and not rest.startswith("//"):
        raise UsageError(f"{raw!r} is not a URL (one slash after '{scheme}:'): did you mean "
                         f"{scheme}://{rest.lstrip('/')}?")


def object_store_url(raw: str) -> str | None:
    """``raw`` as a normalized object-store URL (``s3://bucket/prefix``), or None for a local path.

    ``file://`` URLs are local paths. JAX reaches ``s3://`` and ``gs://`` itself
    (through etils.epath and fsspec); any other scheme is refused rather than
    taken as a folder named ``s3:`` under the current one.

    Raises:
        UsageError: an unsupported scheme, or a URL without a bucket.
    """
    refuse_one_slash_url(raw)
    scheme, sep, rest = raw.strip().partition("://")
    if not sep or scheme.lower() == "file":
        return None
    scheme = {"gcs": "gs"}.get(scheme.lower(), scheme.lower())
    if scheme not in OBJECT_STORE_SCHEMES:
        raise UsageError(f"unsupported cache URL {raw!r}: give a folder, s3://bucket/prefix or gs://bucket/prefix")
    path = "/".join(part for part in rest.split("/") if part)
    if not path:
        raise UsageError(f"{raw!r} names no bucket")
    return f"{scheme}://{path}"


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


OBJECT_STORE_SCHEMES = ("s3", "gs")


class ObjectStoreCacheError(CacheDirError):
    """A command that needs a local folder was given a cache in an object store."""

    exit_code = 2


def default_cache_dir() -> Path:
    return platformdirs.user_cache_path("jaxcache")


def user_config_path() -> Path:
    return platformdirs.user_config_path("jaxcache") / "config.toml"


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` that has ``[tool.jaxcache]``."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and "jaxcache" in read_toml(candidate).get("tool", {}):
            return candidate
    return None


class UnreadableConfig(UsageError):
    """A config file that cannot be read as TOML at all."""


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's contents.

    Raises:
        UnreadableConfig: unreadable, not UTF-8, or invalid TOML (one line naming the file).
    """
    import tomllib  # only when there is a file to read: `jaxcache hook` must start fast

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UnreadableConfig(f"{path}: invalid TOML ({e})") from None
    except UnicodeDecodeError:
        raise UnreadableConfig(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise UnreadableConfig(f"{path}: cannot read ({e.strerror})") from None


def load_table(path: Path, *, pyproject: bool, notes: list[str]) -> dict[str, Any]:
    """The jaxcache settings table of a config file; what cannot be used is noted and left out.

    A file's mistakes (an unknown key, a table that is not one) must not stop
    commands that do not need them, nor crash a program calling ``configure()``:
    each becomes one line in ``notes`` (shown as a warning).

    Raises:
        UnreadableConfig: the file is not TOML at all.
    """
    data = read_toml(path)
    where = f"[tool.jaxcache] of {path}" if pyproject else str(path)
    table = data.get("tool", {}).get("jaxcache", {}) if pyproject else data
    if not isinstance(table, dict):
        notes.append(f"{where}: expected a table; ignored")
        return {}
    for key in table:
        if key not in CONFIG_KEYS and key not in _OTHER_TABLES:
            known = ", ".join(sorted(CONFIG_KEYS))
            notes.append(f"{where}: unknown key {key!r} ignored (known keys: {known})")
    return {k: v for k, v in table.items() if k in CONFIG_KEYS}


def _coerce(name: str, raw: Any, where: str, base: Path) -> Any:
    """Turns a raw value from a file, env or argument into the setting's type."""
    try:
        if name == "cache_dir":
            if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
                # An unset "$VAR" must never mean "the current folder" for a command that deletes.
                raise UsageError(f"{where}: the cache folder must be a non-empty path, got {raw!r}")
            text = os.path.expandvars(os.path.expanduser(str(raw)))  # "$BUCKET/team" may name a URL
            url = object_store_url(text)
            if url is not None:
                return url
            if text.lower().startswith("file:/"):  # file:///x and file:/x alike
                text = "/" + text[len("file:"):].lstrip("/")
            path = Path(text)
            # Absolute and resolved: a relative path or a symlink would fork every key.
            return (base / path).resolve() if not path.is_absolute() else path.resolve()
        if name == "max_size":
            if raw in (-1, "-1", "none", "None", "unlimited", None):
                return -1
            return parse_size(raw)
        if name == "min_entry_size_bytes":
            return int(raw)
        if name == "min_compile_time_secs":
            value = float(raw)
            if value < 0:
                raise ValueError
            return value
        if name == "layout":
            if raw not in ("versioned", "flat"):
                raise ValueError
            return raw
        if name == "xla_caches":
            # JAX's values: all, none, or a comma-separated list of XLA's cache flags.
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError
            raw = raw.strip()
            if raw in ("auto", "all", "none"):
                return raw
            flags = [flag.strip() for flag in raw.split(",")]
            if not set(flags) <= _XLA_CACHE_FLAGS:
                raise ValueError
            return ",".join(flags)
        if name == "remote":
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError
            refuse_one_slash_url(raw)
            if "://" in raw:
                return raw.strip()
            path = Path(os.path.expanduser(raw.strip()))  # a shared folder, relative to the file naming it
            return str(path.resolve() if path.is_absolute() else (base / path).resolve())
        if name == "strict":
            if isinstance(raw, bool):
                return raw
            if str(raw).strip().lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
    except UsageError as e:
        raise UsageError(f"{where}: {e}" if not str(e).startswith(where) else str(e)) from None
    except (TypeError, ValueError):
        raise UsageError(f"{where}: invalid value {raw!r} for {name}") from None
    raise AssertionError(name)


_DEFAULTS: dict[str, Any] = {
    "max_size": -1,
    "min_entry_size_bytes": -1,
    "min_compile_time_secs": 0.0,
    "layout": "versioned",
    "xla_caches": "auto",
    "strict": False,
    "remote": None,
}


def resolve(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    max_size: int | str | None = None,
    min_entry_size_bytes: int | None = None,
    min_compile_time_secs: float | None = None,
    layout: Layout | None = None,
    xla_caches: str | None = None,
    strict: bool | None = None,
    remote: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    argument_source: str = "argument",
) -> Settings:
    """Resolves every setting from arguments, environment, files and defaults.

    Args:
        cache_dir, max_size, min_entry_size_bytes, min_compile_time_secs, layout,
            xla_caches: explicit values; None means "not given here".
        env: the environment to read (default ``os.environ``).
        cwd: where to start looking for ``pyproject.toml`` (default the current folder).
        argument_source: how explicit values are described ("argument", "--cache-dir").

    Raises:
        UsageError: a bad value or unknown key anywhere in the chain.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    explicit = {
        "cache_dir": cache_dir,
        "max_size": max_size,
        "min_entry_size_bytes": min_entry_size_bytes,
        "min_compile_time_secs": min_compile_time_secs,
        "layout": layout,
        "xla_caches": xla_caches,
        "strict": strict,
        "remote": remote,
    }
    layers: list[tuple[str, Path, dict[str, Any]]] = []
    skipped: list[str] = []
    # A file that is not valid TOML (any project's pyproject.toml, mid-edit), an unknown key
    # or a bad value in it is skipped with a warning: it must not stop every command. A bad
    # value given explicitly or in the environment is an error.
    try:
        pyproject = find_pyproject(cwd)
    except UnreadableConfig as e:
        skipped.append(f"{e}; its settings are ignored")
        pyproject = None
    if pyproject is not None:
        layers.append((f"pyproject {pyproject}", pyproject.parent, load_table(pyproject, pyproject=True,
                                                                               notes=skipped)))
    user_config = user_config_path()
    if user_config.is_file():
        try:
            layers.append((f"user config {user_config}", user_config.parent,
                           load_table(user_config, pyproject=False, notes=skipped)))
        except UnreadableConfig as e:
            skipped.append(f"{e}; its settings are ignored")

    resolved: dict[str, Setting] = {}
    for name in explicit:
        resolved[name] = _resolve_one(name, explicit[name], argument_source, env, cwd, layers, skipped)
    return Settings(**resolved, skipped=tuple(skipped))


def _resolve_one(
    name: str,
    explicit: Any,
    argument_source: str,
    env: Mapping[str, str],
    cwd: Path,
    layers: list[tuple[str, Path, dict[str, Any]]],
    notes: list[str],
) -> Setting:
    if explicit is not None:
        return Setting(_coerce(name, explicit, argument_source, cwd), argument_source)
    for var in ENV_VARS[name]:
        if env.get(var):
            return Setting(_coerce(name, env[var], f"env {var}", cwd), f"env {var}")
    config_key = next(k for k, v in CONFIG_KEYS.items() if v == name)
    for source, base, table in layers:
        if config_key in table:
            try:
                return Setting(_coerce(name, table[config_key], source, base), source)
            except UsageError as e:
                notes.append(f"{e}; ignored")  # the next source decides
    if name == "cache_dir":
        return Setting(default_cache_dir().resolve(), "default (platformdirs user cache)")
    return Setting(_DEFAULTS[name], "default")
