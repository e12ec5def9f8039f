"""Pins each fact about JAX's on-disk cache that jaxcache relies on, against the installed JAX.

If a JAX upgrade changes one of these, this file fails before jaxcache mis-reads a cache.
"""

from __future__ import annotations

import json
import os
import shutil
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


JAXLIB = metadata.version("jaxlib")

# A function the filling program never compiles: its entry is new in the capped run.
NEW_KERNEL = """
import jax.numpy as jnp
def tripled_cos(x):
    return jnp.cos(x) * 3
jax.jit(tripled_cos)(jnp.ones(5)).block_until_ready()
"""


def test_missing_atime_breaks_capped_writes_exactly_where_jaxformat_says(tmp_path: Path) -> None:
    """jax#39880: a folder filled without a cap (no -atime files), then used with one. Up to
    jaxlib 0.11.1 every capped write fails in eviction and nothing new is saved; from 0.11.2
    an entry without -atime counts as the oldest and the write succeeds."""
    folder = tmp_path / "mixed"
    run_compile(env_with(CACHE=str(folder)), configure=PLAIN_CONFIGURE)
    before = {p.name for p in _entries(folder)}
    assert before and _entries(folder, "-atime") == []
    proc = run_python(PLAIN_CONFIGURE + NEW_KERNEL, env=env_with(CACHE=str(folder), MAX_SIZE=str(10**9)))
    after = {p.name for p in _entries(folder)}
    new = after - before
    if jaxformat.missing_atime_breaks_writes(JAXLIB):
        assert "Error writing persistent compilation cache entry" in proc.stderr, (JAXLIB, proc.stderr[-2000:])
        assert "FileNotFoundError" in proc.stderr, proc.stderr[-2000:]
        assert after == before, (JAXLIB, sorted(new))  # nothing new was saved
    else:
        assert "Error writing persistent compilation cache entry" not in proc.stderr, (JAXLIB, proc.stderr[-2000:])
        assert before <= after, (JAXLIB, sorted(before - after))  # nothing evicted under a 1 GB cap
        assert any(name.startswith("jit_tripled_cos-") for name in new), (JAXLIB, sorted(new))
        # Each new entry has its -atime; the old ones still have none.
        assert {p.name for p in _entries(folder, "-atime")} == {n[: -len("-cache")] + "-atime" for n in new}


def test_missing_atime_breaks_writes_up_to_jaxlib_0_11_1() -> None:
    assert jaxformat.missing_atime_breaks_writes("0.6.1") and jaxformat.missing_atime_breaks_writes("0.11.1")
    assert not jaxformat.missing_atime_breaks_writes("0.11.2")
    assert not jaxformat.missing_atime_breaks_writes("0.12.0.1")
    assert jaxformat.missing_atime_breaks_writes(None)  # unknown: the cautious answer


def _keys(folder: Path) -> set[str]:
    return {p.name[: -len("-cache")] for p in _entries(folder)}


def test_the_folder_path_is_in_the_key_exactly_where_jaxformat_says(tmp_path: Path) -> None:
    """jax-ml/jax#35699: up to 0.10 the XLA sub-cache path (``<cache dir>/xla_gpu_...``) is
    hashed into every key, so two folders (or the sub-caches switched off) give different keys
    and a copied folder misses everything; from 0.11.0 the path is cleared before hashing, so
    all give the same keys and a copy hits everything."""
    first, second, off = tmp_path / "first", tmp_path / "second", tmp_path / "off"
    filled = run_compile(env_with(CACHE=str(first)), configure=PLAIN_CONFIGURE)
    run_compile(env_with(CACHE=str(second)), configure=PLAIN_CONFIGURE)
    run_compile(env_with(CACHE=str(off)),
                configure=PLAIN_CONFIGURE + 'jax.config.update("jax_persistent_cache_enable_xla_caches", "none")\n')
    keys = _keys(first)
    assert keys and len(keys) == len(filled["misses"]) and not filled["hits"]
    assert {k.rsplit("-", 1)[0] for k in _keys(second)} == {k.rsplit("-", 1)[0] for k in keys}

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, copy)
    used = run_compile(env_with(CACHE=str(copy)), configure=PLAIN_CONFIGURE)
    if jaxformat.path_in_key(JAXLIB):
        assert _keys(second).isdisjoint(keys) and _keys(off).isdisjoint(keys), JAXLIB
        assert _keys(second).isdisjoint(_keys(off)), JAXLIB
        assert not used["hits"] and sorted(used["misses"]) == sorted(filled["misses"]), (JAXLIB, used)
        written = _keys(copy) - keys  # the copy compiled everything again, under keys of its own path
        assert keys <= _keys(copy) and len(written) == len(keys) and written.isdisjoint(_keys(second)), JAXLIB
    else:
        assert _keys(second) == keys and _keys(off) == keys, JAXLIB
        assert not used["misses"] and sorted(used["hits"]) == sorted(filled["misses"]), (JAXLIB, used)
        assert _keys(copy) == keys, JAXLIB


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
    """On every release, 0.11 and later too (where it is no longer in the key): so finding
    another folder's path in an entry means something only where :func:`jaxformat.path_in_key`."""
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


# --- The embedded path, proven over every path length --------------------------------------------
# A real entry is compiled once; the test then rewrites the path inside it with
# its own protobuf re-encoder (written apart from jaxformat's parser), proves a
# sample of the rewritten executables valid by having JAX load and run them, and
# checks that the parser reads back every path of every byte length 1..4096.

AUTOTUNE = b"xla_gpu_per_fusion_autotune_cache_dir"
KERNEL_CACHE = b"xla_gpu_kernel_cache_file"


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _rewrite_message(data: bytes, old: dict[bytes, bytes]) -> bytes | None:
    """Re-encodes a protobuf message with every string field equal to a key of ``old``
    replaced; None if ``data`` is not a message. Sub-messages are rewritten where they
    contain one of the old strings; lengths are re-encoded on the way back up."""
    out = bytearray()
    pos = 0
    try:
        while pos < len(data):
            tag, after_tag = _decode_varint(data, pos)
            wire = tag & 7
            if tag >> 3 == 0 or wire not in (0, 1, 2, 5):
                return None
            if wire == 0:
                _, end = _decode_varint(data, after_tag)
                out += data[pos:end]
            elif wire in (1, 5):
                end = after_tag + (8 if wire == 1 else 4)
                out += data[pos:end]
            else:
                length, start = _decode_varint(data, after_tag)
                end = start + length
                payload = data[start:end]
                if payload in old:
                    payload = old[payload]
                elif any(o in payload for o in old):
                    payload = _rewrite_message(payload, old) or payload
                out += data[pos:after_tag] + _encode_varint(len(payload)) + payload
            if end > len(data):
                return None
            pos = end
    except IndexError:
        return None
    return bytes(out)


def _with_folder(entry: bytes, old_folder: str, new_folder: bytes) -> bytes:
    """A decompressed entry whose sub-cache paths name ``new_folder`` instead of ``old_folder``."""
    header, executable = entry[:4], entry[4:]

    def value(folder: bytes, name: bytes) -> bytes:
        return folder + name if folder.endswith(b"/") else folder + b"/" + name  # str(Path(folder) / name)

    old = {value(old_folder.encode(), n): value(new_folder, n) for n in (AUTOTUNE, KERNEL_CACHE)}
    whole = _rewrite_message(executable, old)
    if whole is not None and whole != executable:
        return header + whole
    # Later jaxlibs: a length-prefixed header message, then the body.
    length, start = _decode_varint(executable, 0)
    head, body = executable[start:start + length], executable[start + length:]
    head, body = _rewrite_message(head, old), _rewrite_message(body, old)
    assert head is not None and body is not None
    return header + _encode_varint(len(head)) + head + body


def _tricky_folder(length: int, *, absolute: bool) -> bytes:
    """A folder of exactly ``length`` bytes (UTF-8, multi-byte characters included) laid
    with traps for a backwards search: before each '/', a byte equal to the length of
    what follows it, as a protobuf length prefix would be."""
    if absolute and length == 1:
        return b"/"
    pieces = [b"/"] if absolute else []
    size = len(pieces)
    pool = ["é", "中", "🧪", "p", "-", "0", "ß"]
    i = 0
    while size < length:
        room = length - size
        tail_after_slash = room - 2  # bytes after a '/' placed next, plus the name's own '/'+name
        if room >= 3 and 0 < tail_after_slash + len(AUTOTUNE) + 1 < 128 and i % 3 == 0:
            piece = bytes([tail_after_slash + len(AUTOTUNE) + 1]) + b"/"
        else:
            char = pool[(length + i) % len(pool)].encode()
            piece = char if len(char) <= room else b"q" * room
        pieces.append(piece)
        size += len(piece)
        i += 1
    folder = b"".join(pieces)
    assert len(folder) == length, (length, folder)
    folder.decode("utf-8")  # a string field XLA accepts
    return folder


@pytest.fixture(scope="module")
def real_entry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cache folder written by real JAX, and its entry for ``jit_step``."""
    folder = tmp_path_factory.mktemp("real") / "cache"
    run_compile(env_with(CACHE=str(folder)), configure=PLAIN_CONFIGURE + (
        'jax.config.update("jax_persistent_cache_enable_xla_caches", "all")\n'))
    return folder, next(p for p in _entries(folder) if p.name.startswith("jit_step-"))


def test_embedded_folder_is_read_exactly_for_every_path_length(real_entry: tuple[Path, Path]) -> None:
    folder, path = real_entry
    entry = jaxformat.decompress_entry(path.read_bytes())
    assert jaxformat.embedded_cache_dir(entry) == str(folder)
    for length in range(1, 4097):
        for absolute in (True, False):
            new_folder = _tricky_folder(length, absolute=absolute)
            rewritten = _with_folder(entry, str(folder), new_folder)
            assert rewritten.count(AUTOTUNE) == entry.count(AUTOTUNE)
            assert jaxformat.embedded_cache_dir(rewritten) == os.fsdecode(new_folder), (length, absolute)


def test_the_rewritten_executables_are_ones_jax_loads(real_entry: tuple[Path, Path], tmp_path: Path) -> None:
    """The re-encoder above makes valid executables: JAX loads each from the cache and runs it."""
    folder, path = real_entry
    entry = jaxformat.decompress_entry(path.read_bytes())
    # Lengths where a varint around the path grows a byte, and a spread between.
    lengths = sorted({1, 2, 3, 50, 88, 89, 90, 126, 127, 128, 129, 255, 256, 1000, 4096}
                     | set(range(5, 4097, 397)))
    variants = []
    for length in lengths:
        variant = tmp_path / f"variant-{length}"
        variant.write_bytes(zlib.compress(_with_folder(entry, str(folder), _tricky_folder(length, absolute=True))))
        variants.append(str(variant))
    program = PLAIN_CONFIGURE + 'jax.config.update("jax_persistent_cache_enable_xla_caches", "all")\n' + """
import json, logging, shutil, sys
import jax.numpy as jnp
hits = []
class Hits(logging.Handler):
    def emit(self, record):
        if str(record.msg).startswith("Persistent compilation cache hit"):
            hits.append(record.args[0])
logger = logging.getLogger("jax._src.compiler")
logger.setLevel(logging.DEBUG)
logger.addHandler(Hits())
logger.propagate = False

def residual(x):
    return jnp.sin(x) * x - 1.0

@jax.jit
def step(x):
    return x - jnp.linalg.solve(jax.jacfwd(residual)(x) + 0.1 * jnp.eye(x.shape[0]), residual(x))

x = jnp.linspace(0.5, 1.5, 8)
expected = step(x)
for variant in json.loads(sys.argv[1]):
    shutil.copyfile(variant, os.environ["ENTRY"])
    jax.clear_caches()
    before = hits.count("jit_step")
    got = step(x)
    assert hits.count("jit_step") == before + 1, variant
    assert bool(jnp.allclose(got, expected)), variant
print("LOADED", len(json.loads(sys.argv[1])))
"""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", program, json.dumps(variants)], capture_output=True, text=True,
                          env=env_with(CACHE=str(folder), ENTRY=str(path)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"LOADED {len(variants)}" in proc.stdout


def test_a_name_outside_the_path_fields_is_not_a_path() -> None:
    """The sub-cache name inside some other string (a module name, say) names no folder."""
    message = b"\x12" + _encode_varint(len(b"/tmp/x/" + AUTOTUNE)) + b"/tmp/x/" + AUTOTUNE  # field 2, not 310
    assert jaxformat.embedded_cache_dir(b"\0\0\0\0" + message) is None
    garbage = b"\xff" * 8 + AUTOTUNE
    with pytest.raises(jaxformat.EmbeddedPathUnknown):
        jaxformat.embedded_cache_dir(b"\0\0\0\0" + garbage)


def test_the_folder_path_is_in_the_key_only_up_to_0_10() -> None:
    assert jaxformat.path_in_key("0.6.1") and jaxformat.path_in_key("0.10.2") and jaxformat.path_in_key("0.10.9")
    assert not jaxformat.path_in_key("0.11.0") and not jaxformat.path_in_key("0.12.0.1")
    assert jaxformat.path_in_key(None)  # unknown: assume the cautious answer


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
