"""Everything JAX decides about the cache folder, in one place.

Mirrors ``jax/_src/lru_cache.py`` (file names, ``-atime`` files, the
``.lockfile``) and ``jax/_src/compilation_cache.py`` (compression and the
4-byte compile-time header) for jax 0.6.1 through 0.12, and which of JAX's
rules about keys and eviction changed in between. ``tests/test_jaxformat.py``
pins each fact against the installed JAX, so an upgrade that changes one fails
loudly instead of silently mis-reading a cache.

On disk, one entry is::

    <module_name>-<64 hex sha256>-cache   zlib or zstd of: 4-byte big-endian int(compile seconds) + executable
    <module_name>-<64 hex sha256>-atime   8 bytes little-endian time.time_ns() of the last use
                                          (only when jax_compilation_cache_max_size != -1)
    .lockfile                             filelock lock taken by JAX around every get/put of a capped cache
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

CACHE_SUFFIX = "-cache"
ATIME_SUFFIX = "-atime"
LOCKFILE_NAME = ".lockfile"
HASH_HEX_LENGTH = 64
COMPILE_TIME_BYTES = 4
ATIME_BYTES = 8

# Sub-caches XLA keeps inside the cache folder (GPU autotuning and kernels).
# jax_persistent_cache_enable_xla_caches puts "<cache dir>/<name>" into the
# compile options, so the folder's path ends up in every key (jax <= 0.10).
XLA_SUBCACHE_NAMES = ("xla_gpu_per_fusion_autotune_cache_dir", "xla_gpu_kernel_cache_file")

ZLIB = "zlib"
ZSTD = "zstd"
Compression = Literal["zlib", "zstd"]
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# How much of an entry to read to recover its 4-byte header: compressed
# headers of the serialized executable are far shorter than this.
_HEADER_READ_BYTES = 4096

_HEX = frozenset("0123456789abcdef")


class EntryFormatError(ValueError):
    """An entry's bytes are not what JAX writes (truncated, garbage, or unreadable)."""


@dataclass(frozen=True)
class EntryName:
    """A parsed entry file name: ``<module>-<hash>-cache`` or ``-atime``."""

    module: str
    hash: str
    kind: Literal["cache", "atime"]

    @property
    def key(self) -> str:
        """The key JAX looks up: ``<module>-<hash>``."""
        return f"{self.module}-{self.hash}"


def parse_entry_name(file_name: str) -> EntryName | None:
    """Parses a file name into an :class:`EntryName`, or None if JAX would not write it.

    Module names may contain ``-``, ``.`` and non-ASCII letters, so the name is
    split from the right.
    """
    if file_name.endswith(CACHE_SUFFIX):
        kind: Literal["cache", "atime"] = "cache"
    elif file_name.endswith(ATIME_SUFFIX):
        kind = "atime"
    else:
        return None
    stem = file_name[: -len(CACHE_SUFFIX)]  # both suffixes have the same length
    module, sep, digest = stem.rpartition("-")
    if not sep or not module or len(digest) != HASH_HEX_LENGTH or not _HEX.issuperset(digest):
        return None
    return EntryName(module=module, hash=digest, kind=kind)


def cache_file_name(key: str) -> str:
    return key + CACHE_SUFFIX


def atime_file_name(key: str) -> str:
    return key + ATIME_SUFFIX


def detect_compression(head: bytes) -> Compression | None:
    """Which compressor wrote these leading bytes, or None if neither JAX uses."""
    if head[:4] == _ZSTD_MAGIC:
        return ZSTD
    # A zlib stream starts with CMF=0x78 (deflate, 32K window) and a check byte.
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return ZLIB
    return None


def _zstandard():
    try:
        import zstandard  # JAX uses it when importable; jaxcache never installs it
    except ImportError:
        return None
    return zstandard


def zstd_available() -> bool:
    """Whether zstd entries can be read in this environment."""
    return _zstandard() is not None


def open_entry(path: Path | str, dir_fd: int | None = None) -> BinaryIO:
    """Opens an entry for reading without following symlinks or touching its atime.

    ``O_NOATIME`` keeps jaxcache's own reads from looking like cache hits (the
    access time is the only record of use in an uncapped cache). The kernel
    allows it only to the file's owner, so it is dropped where refused.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW
    noatime = getattr(os, "O_NOATIME", 0)
    try:
        fd = os.open(path, flags | noatime, dir_fd=dir_fd)
    except PermissionError:
        if not noatime:
            raise
        fd = os.open(path, flags, dir_fd=dir_fd)
    return os.fdopen(fd, "rb")


def read_compile_seconds(path: Path) -> int | None:
    """Reads the whole-second compile time from an entry's header.

    Only the first few KB are read and stream-decompressed. Returns None when
    the entry is zstd and ``zstandard`` is not importable here.

    Raises:
        EntryFormatError: the entry is not a JAX cache entry or is cut short.
        OSError: the file cannot be read.
    """
    with open_entry(path) as f:
        return read_compile_seconds_from(f)


def read_compile_seconds_from(f: BinaryIO) -> int | None:
    """:func:`read_compile_seconds` from an open, seekable binary file (or the first few KB of one)."""
    head = f.read(_HEADER_READ_BYTES)
    compression = detect_compression(head)
    if compression == ZLIB:
        try:
            out = zlib.decompressobj().decompress(head, COMPILE_TIME_BYTES)
        except zlib.error as e:
            raise EntryFormatError(f"bad zlib data: {e}") from None
    elif compression == ZSTD:
        zstandard = _zstandard()
        if zstandard is None:
            return None
        f.seek(0)
        try:
            out = zstandard.ZstdDecompressor().stream_reader(f).read(COMPILE_TIME_BYTES)
        except zstandard.ZstdError as e:
            raise EntryFormatError(f"bad zstd data: {e}") from None
    else:
        raise EntryFormatError("not zlib or zstd data" if head else "empty file")
    if len(out) < COMPILE_TIME_BYTES:
        raise EntryFormatError("cut short before the compile-time header")
    return int.from_bytes(out[:COMPILE_TIME_BYTES], "big")


def decompress_entry(data: bytes) -> bytes:
    """Decompresses a whole entry and checks it ends where the stream ends.

    Raises:
        EntryFormatError: truncated, corrupt, or not zlib/zstd; or zstd without zstandard.
    """
    compression = detect_compression(data)
    if compression == ZLIB:
        decompressor = zlib.decompressobj()
        try:
            out = decompressor.decompress(data)
        except zlib.error as e:
            raise EntryFormatError(f"corrupt zlib data ({e})") from None
        if not decompressor.eof:
            raise EntryFormatError("truncated: the zlib stream ends early")
    elif compression == ZSTD:
        zstandard = _zstandard()
        if zstandard is None:
            raise EntryFormatError("zstd entry, but the zstandard package is not installed here")
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        try:
            out = decompressor.decompress(data)
        except zstandard.ZstdError as e:
            raise EntryFormatError(f"corrupt zstd data ({e})") from None
        if not getattr(decompressor, "eof", True):
            raise EntryFormatError("truncated: the zstd frame ends early")
    else:
        raise EntryFormatError("empty file" if not data else "not zlib or zstd data")
    if len(out) <= COMPILE_TIME_BYTES:
        raise EntryFormatError("no executable after the compile-time header")
    return out


class EmbeddedPathUnknown(EntryFormatError):
    """The executable names an XLA sub-cache but its layout is not one this parser knows."""


def embedded_cache_dir(entry: bytes) -> str | None:
    """The cache folder whose XLA sub-cache path is baked into an executable.

    ``jax/_src/compiler.py`` sets ``debug_options.xla_gpu_per_fusion_autotune_cache_dir``
    (and, with ``jax_persistent_cache_enable_xla_caches='all'``, ``xla_gpu_kernel_cache_file``)
    to ``str(pathlib.Path(cache_dir) / <name>)``; up to jax 0.10 that option is hashed
    into the key. The path is read by walking the serialized protobuf from its
    start, field by field, down to the ``DebugOptions`` field that holds it
    (tag and length decoded, never guessed by searching bytes backwards).

    Args:
        entry: a decompressed entry, as :func:`decompress_entry` returns it (the
            4-byte compile-time header, then the serialized executable).

    Returns:
        The folder, as JAX was given it (absolute or relative), or None when the
        executable carries no sub-cache path (``xla_caches='none'``).

    Raises:
        EmbeddedPathUnknown: a sub-cache name is in the bytes but the protobuf
            framing around it is not one this parser knows, or its copies disagree.
    """
    executable = entry[COMPILE_TIME_BYTES:]
    if not any(name in executable for name in _SUBCACHE_FIELDS.values()):
        return None
    messages = _top_level_messages(executable)
    if messages is None:
        raise EmbeddedPathUnknown("cannot parse the executable's protobuf framing")
    found: set[bytes] = set()
    for name in _SUBCACHE_FIELDS.values():
        at = executable.find(name)
        while at >= 0:
            value = _path_field_at(executable, messages, at, at + len(name))
            if value is not None:
                found.add(_folder_of(value[: -len(name)]))
            at = executable.find(name, at + 1)
    if len(found) > 1:
        raise EmbeddedPathUnknown(f"the executable names {len(found)} different cache folders")
    return os.fsdecode(found.pop()) if found else None


def _folder_of(prefix: bytes) -> bytes:
    """The folder ``pathlib.Path(folder) / name`` was built from, given what precedes ``name``."""
    if not prefix:
        return b"."  # Path("") / name: JAX was given the current folder
    return prefix if prefix == b"/" else prefix[:-1]  # the one separator pathlib put there


# DebugOptions fields in xla/xla.proto that JAX fills with "<cache dir>/<name>"
# (the numbers are protobuf field numbers, stable across releases).
_SUBCACHE_FIELDS = {310: b"xla_gpu_per_fusion_autotune_cache_dir", 306: b"xla_gpu_kernel_cache_file"}
_LEN = 2  # protobuf wire type of strings, bytes and sub-messages
_MAX_DEPTH = 32


def _top_level_messages(data: bytes) -> list[tuple[int, int]] | None:
    """The byte ranges of the top-level messages: the whole buffer (jaxlib <= 0.6), or a
    length-prefixed header message followed by the body (later jaxlibs)."""
    if _fields(data, 0, len(data)) is not None:
        return [(0, len(data))]
    try:
        length, start = _varint(data, 0, len(data))
    except ValueError:
        return None
    split = start + length
    if split > len(data) or _fields(data, start, split) is None or _fields(data, split, len(data)) is None:
        return None
    return [(start, split), (split, len(data))]


def _path_field_at(data: bytes, messages: list[tuple[int, int]], name_start: int, name_end: int) -> bytes | None:
    """The value of the sub-cache path field whose name ends at ``name_end``, or None if those
    bytes are not the tail of such a field (a name inside some other string)."""
    for lo, hi in messages:
        if lo <= name_start and name_end <= hi:
            break
    else:
        return None
    for _ in range(_MAX_DEPTH):
        fields = _fields(data, lo, hi)
        if fields is None:
            return None
        inner = next(((n, a, b) for n, w, a, b in fields if w == _LEN and a <= name_start and name_end <= b), None)
        if inner is None:
            return None
        number, lo, hi = inner
        name = _SUBCACHE_FIELDS.get(number)
        # The outermost match wins: a path is a string, never parsed further.
        if name is not None and hi == name_end and data[name_start:name_end] == name and (
            hi - lo == len(name) or data[name_start - 1 : name_start] == b"/"
        ):
            return data[lo:hi]
    return None


def _fields(data: bytes, lo: int, hi: int) -> list[tuple[int, int, int, int]] | None:
    """(field number, wire type, payload start, payload end) of each field of the message
    in ``data[lo:hi]``, or None unless the range is exactly a sequence of valid fields."""
    fields = []
    pos = lo
    try:
        while pos < hi:
            tag, pos = _varint(data, pos, hi)
            number, wire = tag >> 3, tag & 7
            if number == 0:
                return None
            if wire == 0:
                _, end = _varint(data, pos, hi)
            elif wire == 1:
                end = pos + 8
            elif wire == 5:
                end = pos + 4
            elif wire == _LEN:
                length, pos = _varint(data, pos, hi)
                end = pos + length
            else:  # groups (3, 4) are not used by XLA's protos; 6 and 7 do not exist
                return None
            if end > hi:
                return None
            fields.append((number, wire, pos, end))
            pos = end
    except ValueError:
        return None
    return fields


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decodes a protobuf varint at ``pos``; returns (value, position after it)."""
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("varint runs past the message")


def path_in_key(jaxlib_version: str | None) -> bool:
    """Whether this jaxlib hashes the cache folder's path into every key.

    Up to 0.10 the XLA sub-cache path is part of the hashed compile options, so
    a moved or copied cache misses; jax 0.11.0 clears it before hashing
    (jax-ml/jax#35699, ``_hash_serialized_compile_options`` in ``cache_key.py``),
    so there a copied cache hits. Unknown versions are taken to hash it (the
    cautious answer for a check: it only reports).
    """
    if jaxlib_version is None:
        return True
    return _release(jaxlib_version) < (0, 11)


def missing_atime_breaks_writes(jaxlib_version: str | None) -> bool:
    """Whether a ``-cache`` without its ``-atime`` makes every capped write of this jaxlib fail.

    Up to 0.11.1 ``LRUCache._evict_if_needed`` stats every ``-atime`` and raises
    FileNotFoundError for a missing one (jax-ml/jax#39880); from 0.11.2 it takes
    such an entry as the oldest. Unknown versions get the cautious answer.
    """
    if jaxlib_version is None:
        return True
    return _release(jaxlib_version) < (0, 11, 2)


def _release(version: str) -> tuple[int, ...]:
    import re

    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


def encode_atime(time_ns: int) -> bytes:
    return time_ns.to_bytes(ATIME_BYTES, "little")


def decode_atime(data: bytes) -> int | None:
    """The last-use time in ns, or None if the bytes are not an atime record."""
    if len(data) != ATIME_BYTES:
        return None
    return int.from_bytes(data, "little")

