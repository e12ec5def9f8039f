"""Resolution order and validation of settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jaxcache import settings
from jaxcache.errors import UsageError


def _pyproject(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text("[project]\nname = 'x'\n\n[tool.jaxcache]\n" + body)
    return path


def _user_config(body: str) -> Path:
    path = settings.user_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def test_default_is_platformdirs_user_cache() -> None:
    resolved = settings.resolve(env={})
    assert resolved.root == Path(os.environ["XDG_CACHE_HOME"]).resolve() / "jaxcache"
    assert resolved.cache_dir.source.startswith("default")
    assert resolved.max_size.value == -1 and resolved.min_entry_size_bytes.value == -1
    assert resolved.min_compile_time_secs.value == 0


def test_each_layer_overrides_the_ones_below(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    _user_config(f'dir = "{tmp_path / "user"}"\nmax_size = "1GB"\n')
    assert settings.resolve(env={}, cwd=tmp_path).root == tmp_path / "user"

    _pyproject(project, 'dir = "cache-here"\n')
    nested = project / "src" / "pkg"
    nested.mkdir(parents=True)
    resolved = settings.resolve(env={}, cwd=nested)
    # Relative to the pyproject's folder, not the cwd; other keys still come from below.
    assert resolved.root == project / "cache-here"
    assert resolved.cache_dir.source == f"pyproject {project / 'pyproject.toml'}"
    assert resolved.max_size.value == 1_000_000_000 and resolved.max_size.source.startswith("user config")

    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jaxenv")}
    assert settings.resolve(env=env, cwd=nested).root == tmp_path / "jaxenv"
    env["JAXCACHE_DIR"] = str(tmp_path / "ours")
    assert settings.resolve(env=env, cwd=nested).cache_dir.source == "env JAXCACHE_DIR"
    explicit = settings.resolve(cache_dir=tmp_path / "arg", env=env, cwd=nested)
    assert explicit.root == tmp_path / "arg" and explicit.cache_dir.source == "argument"


def test_paths_are_absolute_and_symlinks_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert settings.resolve(cache_dir=link, env={}).root == real
    assert settings.resolve(cache_dir="rel/cache", env={}, cwd=tmp_path).root == tmp_path / "rel" / "cache"
    assert settings.resolve(cache_dir="rel/cache", env={}).root == Path.cwd().resolve() / "rel" / "cache"


@pytest.mark.parametrize(
    "body, message",
    [
        ('colour = "blue"\n', "unknown key 'colour'"),
        ('max_size = "5XB"\n', "invalid size '5XB'"),
        ("min_compile_time_secs = -1\n", "invalid value"),
        ('layout = "sideways"\n', "invalid value"),
        ("dir = 3\n", "non-empty path"),
    ],
)
def test_bad_pyproject_values_are_left_out_with_a_warning(tmp_path: Path, body: str, message: str) -> None:
    """A typo in a pyproject.toml up the tree (perhaps another project's) must not stop every
    command or crash a program that calls configure(): the value is left out, and said so."""
    path = _pyproject(tmp_path, body)
    resolved = settings.resolve(env={}, cwd=tmp_path)
    (note,) = resolved.skipped
    assert message in note and str(path) in note and "ignored" in note
    assert resolved.max_size.value == -1 and resolved.cache_dir.source.startswith("default")


def test_a_bad_value_in_the_environment_or_an_argument_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid size"):
        settings.resolve(env={}, cwd=tmp_path, max_size="5XB")
    with pytest.raises(UsageError, match="env JAXCACHE_LAYOUT"):
        settings.resolve(env={"JAXCACHE_LAYOUT": "sideways"}, cwd=tmp_path)


def test_a_pyproject_that_is_not_toml_is_skipped_with_a_warning(tmp_path: Path) -> None:
    """Any project's pyproject.toml, mid-edit, must not stop every command."""
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.jaxcache]\ndir = [\n')
    resolved = settings.resolve(env={}, cwd=tmp_path, cache_dir=tmp_path / "c")
    assert resolved.root == tmp_path / "c"
    (note,) = resolved.skipped
    assert str(path) in note and "invalid TOML" in note and "\n" not in note
    assert settings.resolve(env={}, cwd=tmp_path).cache_dir.source.startswith("default")


def test_commands_and_configure_run_past_an_invalid_pyproject(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "pyproject.toml").write_text("[project\nname = 'x'\n")
    cli = subprocess.run([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "c"), "config"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert [line for line in cli.stderr.splitlines() if line.startswith("jaxcache: warning:")]
    assert "Traceback" not in cli.stderr
    code = "import warnings, jaxcache\nwarnings.simplefilter('always')\njaxcache.configure(%r)\nprint('OK')" % str(
        tmp_path / "c")
    py = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert py.returncode == 0 and py.stdout.strip() == "OK", py.stderr
    assert "invalid TOML" in py.stderr and "Traceback" not in py.stderr


def test_warm_table_is_left_to_warm(tmp_path: Path) -> None:
    _pyproject(tmp_path, 'dir = "c"\n[tool.jaxcache.warm]\nproblems = ["bratu"]\n')
    assert settings.resolve(env={}, cwd=tmp_path).root == tmp_path / "c"


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(UsageError, match="env JAXCACHE_MAX_SIZE"):
        settings.resolve(env={"JAXCACHE_MAX_SIZE": "lots"})


@pytest.mark.parametrize("text, expected", [("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), ("500M", 5 * 10**8),
                                            ("1024", 1024), ("10 kb", 10_000), ("3KiB", 3072)])
def test_sizes(text: str, expected: int) -> None:
    from jaxcache.units import parse_size

    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["5XB", "", "GB", "-3", "1e9", "two gigs"])
def test_bad_sizes(text: str) -> None:
    from jaxcache.units import parse_size

    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("1w2d", 9 * 86400), ("90min", 5400),
                                           ("45s", 45), ("1d 12h", 129600)])
def test_durations(text: str, seconds: float) -> None:
    from jaxcache.units import parse_duration

    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["tomorrow", "30", "", "5 parsecs", "d30", "-1d"])
def test_bad_durations(text: str) -> None:
    from jaxcache.units import parse_duration

    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["1M", "2M30s"])
def test_a_capital_m_is_refused_as_ambiguous(text: str) -> None:
    from jaxcache.units import parse_duration

    with pytest.raises(UsageError, match="ambiguous"):
        parse_duration(text)
    assert parse_duration("1m").total_seconds() == 60
