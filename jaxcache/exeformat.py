"""The executable store's files on disk: names, header, payload, listing, proven deletion.

One file per stored kernel, ``<jax cache folder>/executables/<sha256>.jaxexe``:
`MAGIC`, a 4-byte big-endian header length, a JSON header (kernel module,
versions, platform, compile seconds, memory analysis, devices, payload size
and CRC-32), then the zlib-compressed pickled payload. jaxcache lists, checks
and deletes these files from the header alone, without JAX and without
unpickling anything; `jaxcache.executables` writes and loads them.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxcache.atomic import TEMP_PREFIX

__all__ = [
    "FOLDER_NAME",
    "MAGIC",
    "SUFFIX",
    "ExecutableFormatError",
    "StoredExecutable",
    "delete",
    "encode",
    "file_is_whole",
    "is_store_name",
    "list_folder",
    "read_header",
    "split",
]

FOLDER_NAME = "executables"
SUFFIX = ".jaxexe"
MAGIC = b"JAXCACHE-EXE-1\n"
FORMAT = 1
_NAME_RE = re.compile(r"[0-9a-f]{64}" + re.escape(SUFFIX))
_HEADER_LEN = struct.Struct(">I")
_MAX_HEADER = 1 << 16
_TEMP_PREFIX = TEMP_PREFIX  # jaxcache's one temp-file prefix: `check` finds those a dead writer left


class ExecutableFormatError(ValueError):
    """A file in the store that is not a readable stored executable."""


@dataclass(frozen=True)
class StoredExecutable:
    """One file of the store, described from its header (never unpickled).

    Attributes:
        path: the file.
        key: its key (the file name's hash).
        bytes: file size.
        written: modification time (seconds since the epoch).
        last_used: access time; loads read the file, so it moves under ``relatime``.
        module: the kernel's module name, e.g. ``jit_lsq_iterate``.
        jaxlib: the jaxlib version that wrote it.
        platform: the backend platform it was compiled for.
        compile_seconds: how long lowering plus compiling took when it was stored.
        version: the jaxlib version of the folder holding it (its marker); None when unknown.
    """

    path: Path
    key: str
    bytes: int
    written: float
    last_used: float
    module: str
    jaxlib: str
    platform: str
    compile_seconds: float
    version: str | None = None

    @property
    def recency(self) -> float:
        return max(self.written, self.last_used)


def is_store_name(name: str) -> bool:
    """Whether a file name is one the store writes."""
    return _NAME_RE.fullmatch(name) is not None


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a stored executable.

    Raises:
        ExecutableFormatError: the file is not a stored executable.
        OSError: it cannot be read.
    """
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + _HEADER_LEN.size)
        if len(head) < len(MAGIC) + _HEADER_LEN.size or not head.startswith(MAGIC):
            raise ExecutableFormatError(f"{path.name}: not a stored executable")
        (length,) = _HEADER_LEN.unpack(head[len(MAGIC):])
        if length > _MAX_HEADER:
            raise ExecutableFormatError(f"{path.name}: header of {length} bytes")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExecutableFormatError(f"{path.name}: unreadable header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ExecutableFormatError(f"{path.name}: unknown format")
    return header


def file_is_whole(path: Path, header: dict[str, Any], *, verify_checksum: bool = False) -> bool:
    """Whether a stored file holds exactly the payload its header describes (size; checksum if asked)."""
    with open(path, "rb") as f:
        f.seek(len(MAGIC))
        (length,) = _HEADER_LEN.unpack(f.read(_HEADER_LEN.size))
        f.seek(0, os.SEEK_END)
        body_size = f.tell() - len(MAGIC) - _HEADER_LEN.size - length
        if body_size != header.get("payload_bytes"):
            return False
        if not verify_checksum:
            return True
        f.seek(len(MAGIC) + _HEADER_LEN.size + length)
        return zlib.crc32(f.read()) == header.get("payload_crc32")


def encode(header: dict[str, Any], body: bytes) -> bytes:
    """A whole file: the header gains the format, the payload's size and its checksum."""
    raw = json.dumps({**header, "format": FORMAT, "payload_bytes": len(body), "payload_crc32": zlib.crc32(body)})
    encoded = raw.encode()
    return MAGIC + _HEADER_LEN.pack(len(encoded)) + encoded + body


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A file's header and payload, the payload checked against the header.

    Raises:
        ExecutableFormatError: not a stored executable, or truncated or damaged.
    """
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEADER_LEN.size:
        raise ExecutableFormatError("not a stored executable")
    (length,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _HEADER_LEN.size + length
    try:
        header = json.loads(data[len(MAGIC) + _HEADER_LEN.size: start])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExecutableFormatError("unreadable header") from None
    body = data[start:]
    if not isinstance(header, dict) or len(body) != header.get("payload_bytes") \
            or zlib.crc32(body) != header.get("payload_crc32"):
        raise ExecutableFormatError("the payload does not match its header (truncated or damaged)")
    return header, body


def list_folder(cache_folder: Path) -> tuple[list[StoredExecutable], list[Path], list[Path]]:
    """The stored executables of one JAX cache folder, the files there that are not, and temp files.

    ``cache_folder`` is the folder JAX writes entries to (a version folder or a
    flat cache); the store is its ``executables`` subfolder, never followed
    if it is a symlink. Files whose header cannot be read come back in the
    second list (the store is never trusted by name alone); temporary files
    of writes in progress (or of writers that died) in the third.
    """
    folder = cache_folder / FOLDER_NAME
    good: list[StoredExecutable] = []
    bad: list[Path] = []
    temps: list[Path] = []
    if folder.is_symlink():
        return good, [folder], temps
    try:
        it = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return good, bad, temps
    with it:
        for dirent in it:
            path = Path(dirent.path)
            if dirent.name.startswith(_TEMP_PREFIX) and not dirent.is_symlink():
                temps.append(path)
                continue
            if not is_store_name(dirent.name) or not dirent.is_file(follow_symlinks=False):
                bad.append(path)
                continue
            try:
                st = dirent.stat(follow_symlinks=False)
                header = read_header(path)
            except FileNotFoundError:
                continue  # replaced or deleted meanwhile
            except (OSError, ExecutableFormatError):
                bad.append(path)
                continue
            good.append(StoredExecutable(
                path=path, key=dirent.name[: -len(SUFFIX)], bytes=st.st_size, written=st.st_mtime,
                last_used=st.st_atime, module=str(header.get("module", "?")), jaxlib=str(header.get("jaxlib", "?")),
                platform=str(header.get("platform", "?")), compile_seconds=float(header.get("compile_seconds", 0.0)),
            ))
    good.sort(key=lambda e: e.key)
    return good, bad, temps


def delete(item: StoredExecutable) -> str | None:
    """Deletes one stored executable after proving it is one; returns why not, if not."""
    try:
        read_header(item.path)
    except FileNotFoundError:
        return "already gone"
    except ExecutableFormatError:
        return "contents are not a stored executable"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if item.path.is_symlink() or item.path.parent.is_symlink():
        return "not a regular file in the cache"
    try:
        item.path.unlink()
    except FileNotFoundError:
        return "already gone"
    except OSError as e:
        return f"cannot delete ({e.strerror})"
    return None
