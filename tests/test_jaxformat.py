"""Pins each fact about JAX's on-disk cache that jaxcache relies on, against the installed JAX.

If a JAX upgrade changes one of these, this file fails before jaxcache mis-reads a cache.
"""

from __future__ import annotations

import zlib
from importlib import metadata
from pathlib import Path

import pytest

from jaxcache_testing import env_with, run_compile, run_python
from jaxcache import jaxformat

PLAIN_CONFIGURE = """
import jax, os
jax.config.update("jax_compilation_cache_dir", os.environ["CACHE"])
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
if os.environ.get("MAX_SIZE"):
    jax.config.update("jax_compilation_cache_max_size", int(os.environ["MAX_SIZE"]))
"""


def _entries(folder: Path, suffix: str = "-cache") -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(suffix))


def test_entry_names_header_and_no_atime_without_a_cap(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    events = run_compile(env_with(CACHE=str(folder)), configure=PLAIN_CONFIGURE)
    entries = _entries(folder)
    assert entries and len(entries) == len(events["misses"])
    for path in entries:
        parsed = jaxformat.parse_entry_name(path.name)
        assert parsed is not None and parsed.kind == "cache"
        assert parsed.module in events["misses"]
        data = path.read_bytes()
        assert jaxformat.detect_compression(data) == jaxformat.ZLIB  # zstandard is not installed here
        # Header: 4 bytes big-endian whole compile seconds, then the executable.
        raw = zlib.decompress(data)
        assert jaxformat.read_compile_seconds(path) == int.from_bytes(raw[:4], "big")
        assert jaxformat.decompress_entry(data) == raw
    assert _entries(folder, "-atime") == []
    assert not (folder / jaxformat.LOCKFILE_NAME).exists()


def test_a_cap_adds_atime_files_and_the_lockfile(tmp_path: Path) -> None:
    folder = tmp_path / "capped"
    run_compile(env_with(CACHE=str(folder), MAX_SIZE=str(10**9)), configure=PLAIN_CONFIGURE)
    caches, atimes = _entries(folder), _entries(folder, "-atime")
    assert [p.name[:-6] for p in caches] == [p.name[:-6] for p in atimes]
    for path in atimes:
        assert jaxformat.decode_atime(path.read_bytes()) is not None  # 8 bytes little-endian ns
        assert abs(jaxformat.decode_atime(path.read_bytes()) / 1e9 - path.stat().st_mtime) < 5
    assert (folder / jaxformat.LOCKFILE_NAME).exists()


def test_module_decompression_matches_jax_own() -> None:
    from jax._src import compilation_cache

    payload = (3).to_bytes(4, "big") + b"executable bytes"
    stored = compilation_cache.compress_executable(payload)
    assert jaxformat.decompress_entry(stored) == payload
    executable, seconds = compilation_cache.extract_executable_and_time(payload)
    assert seconds == 3 and executable == b"executable bytes"
    assert jaxformat.encode_atime(123) == (123).to_bytes(8, "little")


def test_jaxlib_metadata_version_is_the_one_hashed_into_keys() -> None:
    from jax._src import cache_key

    assert cache_key.jaxlib_version_str == metadata.version("jaxlib")


def test_lru_cache_suffixes_and_lockfile_name() -> None:
    from jax._src import lru_cache

    assert lru_cache._CACHE_SUFFIX == jaxformat.CACHE_SUFFIX
    assert lru_cache._ATIME_SUFFIX == jaxformat.ATIME_SUFFIX
    source = Path(lru_cache.__file__).read_text()
    assert '".lockfile"' in source


def test_missing_atime_breaks_every_capped_write(tmp_path: Path) -> None:
    """jax#39880: an uncapped cache later used with a cap cannot save anything new."""
    folder = tmp_path / "mixed"
    run_compile(env_with(CACHE=str(folder)), configure=PLAIN_CONFIGURE)
    proc = run_python(
        PLAIN_CONFIGURE + """
import jax.numpy as jnp
jax.jit(lambda x: jnp.cos(x) * 3)(jnp.ones(5)).block_until_ready()
""",
        env=env_with(CACHE=str(folder), MAX_SIZE=str(10**9)),
    )
    assert "Error writing persistent compilation cache entry" in proc.stderr
    assert "FileNotFoundError" in proc.stderr


def test_truncated_entry_is_never_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "trunc"
    run_compile(env_with(CACHE=str(folder)), configure=PLAIN_CONFIGURE)
    victim = next(p for p in _entries(folder) if p.name.startswith("jit_step-"))
    victim.write_bytes(victim.read_bytes()[:100])
    proc = run_python(_counting(PLAIN_CONFIGURE), env=env_with(CACHE=str(folder)))
    assert "Error reading persistent compilation cache entry" in proc.stderr
    assert len(victim.read_bytes()) == 100  # JAX skips existing keys on put


def _counting(configure: str) -> str:
    from jaxcache_testing import compile_program

    return compile_program(configure)


def test_log_records_carry_module_and_key(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    first = run_compile(env_with(CACHE=str(folder)), configure=PLAIN_CONFIGURE)
    second = run_compile(env_with(CACHE=str(folder)), configure=PLAIN_CONFIGURE)
    assert "jit_step" in first["misses"] and not first["hits"]
    assert sorted(second["hits"]) == sorted(first["misses"]) and not second["misses"]


def test_autotune_path_is_baked_into_entries_unless_xla_caches_off(tmp_path: Path) -> None:
    default, off = tmp_path / "default", tmp_path / "off"
    run_compile(env_with(CACHE=str(default)), configure=PLAIN_CONFIGURE)
    run_compile(
        env_with(CACHE=str(off)),
        configure=PLAIN_CONFIGURE + 'jax.config.update("jax_persistent_cache_enable_xla_caches", "none")\n',
    )
    for path in _entries(default):
        assert jaxformat.embedded_cache_dir(jaxformat.decompress_entry(path.read_bytes())) == str(default)
    for path in _entries(off):
        assert jaxformat.embedded_cache_dir(jaxformat.decompress_entry(path.read_bytes())) is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("jit_f-" + "a" * 64 + "-cache", ("jit_f", "cache")),
        ("jit_my-fn.v2-" + "0" * 64 + "-atime", ("jit_my-fn.v2", "atime")),
        ("jit_ñame-" + "f" * 64 + "-cache", ("jit_ñame", "cache")),
        ("-" + "a" * 64 + "-cache", None),
        ("jit_f-" + "A" * 64 + "-cache", None),
        ("jit_f-" + "a" * 63 + "-cache", None),
        ("notes.txt", None),
        (".lockfile", None),
    ],
)
def test_parse_entry_name(name: str, expected: tuple[str, str] | None) -> None:
    parsed = jaxformat.parse_entry_name(name)
    assert (None if parsed is None else (parsed.module, parsed.kind)) == expected


@pytest.mark.parametrize(
    "data, problem",
    [(b"", "empty"), (b"hello world", "not zlib"), (zlib.compress(b"\0\0\0\1" + bytes(range(256)) * 8)[:200], "truncated"),
     (zlib.compress(b"\0\0"), "no executable")],
)
def test_decompress_entry_rejects_broken_data(data: bytes, problem: str) -> None:
    with pytest.raises(jaxformat.EntryFormatError, match=problem):
        jaxformat.decompress_entry(data)
