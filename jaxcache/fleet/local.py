"""The local side: a version folder described as manifest records, and what it already holds.

Describing an object reads it whole: its SHA-256, and a proof that it is
complete (an entry's compressed stream ends where the file ends; a stored
executable's payload matches its header), so a push never spreads a
half-written or damaged entry to a fleet. JAX never rewrites an entry and the
store never rewrites a file, so each description is kept in
``<folder>/.jaxcache/fleet/digests.json`` by name, size, mtime and inode, and a
second push reads nothing it has read before.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat as statmod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxcache import atomic, exeformat, jaxformat, provenance
from jaxcache.errors import CacheDirError
from jaxcache.fleet.manifest import Manifest, ObjectRecord
from jaxcache.index import META_DIR_NAME

FLEET_DIR = "fleet"
_DIGESTS = "digests.json"
_DIGESTS_FORMAT = 1


@dataclass(frozen=True)
class Described:
    """A version folder's objects, described for a manifest.

    Attributes:
        folder: the folder described.
        jaxlib, jax: the versions of its marker.
        objects: one record per complete object, sorted by name.
        refused: (name, why) for objects that are not complete (mid-write or damaged): never sent.
    """

    folder: Path
    jaxlib: str
    jax: str | None
    objects: tuple[ObjectRecord, ...]
    refused: tuple[tuple[str, str], ...] = ()

    def manifest(self, *, writer: str = "", supersedes: tuple[str, ...] = ()) -> Manifest:
        return Manifest(jaxlib=self.jaxlib, jax=self.jax, path_in_key=jaxformat.path_in_key(self.jaxlib),
                        objects=self.objects, writer=writer, supersedes=supersedes)


def meta_dir(folder: Path) -> Path:
    """Where the fleet keeps its local state for a version folder (created on demand)."""
    return folder / META_DIR_NAME / FLEET_DIR


def version_folder(root: Path, jaxlib: str) -> Path:
    """The marked folder of one jaxlib version in a cache root (or the root itself, if it is one).

    Raises:
        CacheDirError: there is no such folder.
    """
    marker = provenance.read_marker(root)
    if marker is not None:
        if marker.jaxlib != jaxlib:
            raise CacheDirError(f"{root} is the folder of jaxlib {marker.jaxlib}, not {jaxlib}")
        return root
    folder = provenance.version_dir(root, jaxlib)
    if folder.is_symlink() or provenance.read_marker(folder) is None:
        raise CacheDirError(f"no entries of jaxlib {jaxlib} in {root} (no marked folder {folder.name}/)")
    return folder


def present(folder: Path) -> set[str]:
    """The names of the objects a folder holds (any file or link by that name counts: never replaced)."""
    names: set[str] = set()
    for sub, prefix in ((folder, ""), (folder / exeformat.FOLDER_NAME, exeformat.FOLDER_NAME + "/")):
        try:
            with os.scandir(sub) as it:
                names.update(prefix + d.name for d in it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise CacheDirError(f"cannot list {sub}: {e.strerror}") from None
    return names


def describe(folder: Path, *, name: str | None = None) -> Described:
    """Every complete object of a marked version folder, as manifest records.

    Args:
        folder: a version folder (``<root>/jaxlib-<version>``).
        name: only objects whose module name (or file name) matches this glob.

    Raises:
        CacheDirError: the folder is not a marked version folder, or cannot be read.
    """
    marker = provenance.read_marker(folder)
    if marker is None:
        raise CacheDirError(f"{folder} is not a jaxcache version folder (no {provenance.MARKER_NAME})")
    path_keyed = jaxformat.path_in_key(marker.jaxlib)
    writes = provenance.load_writes(folder)
    cache = _load_digests(folder)
    fresh: dict[str, list[Any]] = {}
    records: list[ObjectRecord] = []
    refused: list[tuple[str, str]] = []
    for rel, kind in _candidates(folder):
        path = folder / rel
        try:
            fd = jaxformat.open_entry(path)
        except FileNotFoundError:
            continue  # deleted since the listing (a prune)
        except OSError as e:
            refused.append((rel, f"unreadable ({e.strerror})"))
            continue
        with fd:
            st = os.fstat(fd.fileno())
            if not statmod.S_ISREG(st.st_mode):
                continue
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
            known = cache.get(rel)
            if known is not None and known[:3] == stamp:
                record = ObjectRecord.from_dict(known[3])
            else:
                data = fd.read()
                try:
                    record = (_entry_record(rel, data, st.st_mtime, writes, path_keyed) if kind == "entry"
                              else _executable_record(rel, data, st.st_mtime))
                except ValueError as e:
                    refused.append((rel, str(e)))
                    continue
        fresh[rel] = [*stamp, record.as_dict()]
        if name is None or fnmatch.fnmatchcase(record.module, name) or fnmatch.fnmatchcase(rel, name):
            records.append(record)
    if fresh != cache:
        _save_digests(folder, fresh)
    return Described(folder=folder, jaxlib=marker.jaxlib, jax=marker.jax,
                     objects=tuple(sorted(records, key=lambda r: r.name)), refused=tuple(refused))


def _candidates(folder: Path) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    try:
        with os.scandir(folder) as it:
            for d in it:
                parsed = jaxformat.parse_entry_name(d.name)
                if parsed is not None and parsed.kind == "cache" and not d.is_symlink():
                    found.append((d.name, "entry"))
    except OSError as e:
        raise CacheDirError(f"cannot list {folder}: {e.strerror}") from None
    store = folder / exeformat.FOLDER_NAME
    if not store.is_symlink():
        try:
            with os.scandir(store) as it:
                found.extend((f"{exeformat.FOLDER_NAME}/{d.name}", "executable") for d in it
                             if exeformat.is_store_name(d.name) and not d.is_symlink())
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            raise CacheDirError(f"cannot list {store}: {e.strerror}") from None
    return sorted(found)


def _entry_record(rel: str, data: bytes, mtime: float, writes: dict[str, provenance.WriteRecord],
                  path_keyed: bool) -> ObjectRecord:
    """Raises ValueError when the entry is not complete."""
    compression = jaxformat.detect_compression(data)
    try:
        whole = jaxformat.decompress_entry(data)
    except jaxformat.EntryFormatError as e:
        raise ValueError(f"not a complete entry ({e}); `jaxcache check --repair` handles it") from None
    keyed_path: str | None = None
    known = True
    if path_keyed:
        try:
            keyed_path = jaxformat.embedded_cache_dir(whole)
        except jaxformat.EmbeddedPathUnknown:
            known = False
    key = rel[: -len(jaxformat.CACHE_SUFFIX)]
    logged = writes.get(key)
    seconds = logged.compile_seconds if logged and logged.compile_seconds is not None else \
        float(int.from_bytes(whole[:jaxformat.COMPILE_TIME_BYTES], "big"))
    return ObjectRecord(
        name=rel, kind="entry", size=len(data), sha256=hashlib.sha256(data).hexdigest(), module=key[:-65],
        platform=logged.platform if logged else None, compile_seconds=seconds, compression=compression,
        keyed_path=keyed_path, keyed_path_known=known, written=mtime,
    )


def _executable_record(rel: str, data: bytes, mtime: float) -> ObjectRecord:
    """Raises ValueError when the file is not a whole stored executable."""
    try:
        header, _ = exeformat.split(data)
    except exeformat.ExecutableFormatError as e:
        raise ValueError(f"not a whole stored executable ({e})") from None
    count = header.get("device_count")
    seconds = header.get("compile_seconds")
    return ObjectRecord(
        name=rel, kind="executable", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        module=str(header.get("module", "?")), platform=_str(header.get("platform")),
        compile_seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
        cpu=_str(header.get("host_cpu")), device_kind=_str(header.get("device_kind")),
        device_count=count if isinstance(count, int) else None, written=mtime,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _load_digests(folder: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads((meta_dir(folder) / _DIGESTS).read_bytes())
        if data.get("format") == _DIGESTS_FORMAT and isinstance(data.get("objects"), dict):
            return {k: v for k, v in data["objects"].items() if isinstance(v, list) and len(v) == 4}
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _save_digests(folder: Path, objects: dict[str, list[Any]]) -> None:
    """Best effort: a folder that cannot be written is read again next time."""
    try:
        write_atomically(meta_dir(folder) / _DIGESTS,
                         json.dumps({"format": _DIGESTS_FORMAT, "objects": objects}).encode())
    except OSError:
        pass


def write_atomically(path: Path, data: bytes) -> None:
    """A whole file or none (`jaxcache.atomic.write_atomically`), creating its folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_atomically(path, data)
