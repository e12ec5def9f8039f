"""Everything JAX decides about the cache folder, in one place.

Mirrors ``jax/_src/lru_cache.py`` (file names, ``-atime`` files, the
``.lockfile``) and ``jax/_src/compilation_cache.py`` (compression and the
4-byte compile-time header) for jax 0.6 through 0.10. ``tests/test_jaxformat.py``
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
_AUTOTUNE_MARKER = b"/xla_gpu_per_fusion_autotune_cache_dir"

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


def embedded_cache_dir(executable: bytes) -> str | None:
    """The cache folder whose XLA autotune sub-cache path is baked into an executable.

    JAX (<= 0.10) hashes that path into the key, so an entry carrying another
    folder's path can never be hit here. Returns None when the entry carries no
    such path (written with ``jax_persistent_cache_enable_xla_caches='none'``).
    """
    end = executable.find(_AUTOTUNE_MARKER)
    if end < 0:
        return None
    stop = end + len(_AUTOTUNE_MARKER)
    # The path is a protobuf string field: a varint length right before it.
    for start in range(end, max(end - 4096, 1), -1):
        length = stop - start
        prefix = _varint(length)
        if executable[start - len(prefix) : start] == prefix and executable[start : start + 1] == b"/":
            return executable[start:end].decode("utf-8", errors="replace")
    return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_atime(time_ns: int) -> bytes:
    return time_ns.to_bytes(ATIME_BYTES, "little")


def decode_atime(data: bytes) -> int | None:
    """The last-use time in ns, or None if the bytes are not an atime record."""
    if len(data) != ATIME_BYTES:
        return None
    return int.from_bytes(data, "little")

