"""The fleet's model: what each object of a version folder is, and a manifest of them.

A manifest describes the objects of one jaxlib version folder: JAX's entries
(``<module>-<hash>-cache``) and the executable store's files
(``executables/<sha256>.jaxexe``), each with its size and SHA-256, and the
facts a node needs to tell, without fetching it, whether it can ever hit it:

- for the whole folder: the jaxlib and jax versions, and whether that jaxlib
  hashes the cache folder's path into every key (up to 0.10, see
  `jaxcache.jaxformat.path_in_key`);
- for an entry: its compression (the compressor's name is in JAX's key), the
  platform that wrote it (when jaxcache was there to record it), and the
  folder path baked into its key, if any;
- for a stored executable: its platform, and the CPU features and devices its
  key was made for (`jaxcache.executables`).

Manifests are plain data, serialized as canonical JSON so that a signature
(`jaxcache.fleet.trust`) covers exactly what a reader parses. Names coming
from a remote are validated here, before anything uses them as a local path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from jaxcache import exeformat, jaxformat
from jaxcache.fleet.errors import TrustError

FORMAT = 1
Kind = Literal["entry", "executable"]
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_EXECUTABLE_PREFIX = exeformat.FOLDER_NAME + "/"


# The only two shapes of name a manifest may carry (jaxformat.parse_entry_name and
# exeformat.is_store_name, as one regex each: a 10k-entry manifest is checked on every full read).
_ENTRY_NAME = re.compile(r"(?![.])[^/\\\x00]+-[0-9a-f]{64}" + re.escape(jaxformat.CACHE_SUFFIX))
_EXECUTABLE_NAME = re.compile(re.escape(exeformat.FOLDER_NAME + "/") + r"[0-9a-f]{64}" + re.escape(exeformat.SUFFIX))


def valid_name(name: str) -> Kind | None:
    """The kind of object a relative name denotes, or None if it is not one jaxcache transfers.

    Only two shapes are accepted: a JAX entry name with no separator in it
    (``<module>-<64 hex>-cache``), and ``executables/<64 hex>.jaxexe``. A
    manifest naming anything else (``../x``, an absolute path, a dot file) is refused.
    """
    if not isinstance(name, str):
        return None
    if _ENTRY_NAME.fullmatch(name):
        return "entry"
    if _EXECUTABLE_NAME.fullmatch(name):
        return "executable"
    return None


@dataclass(frozen=True)
class ObjectRecord:
    """One object of a version folder, as a manifest describes it.

    Attributes:
        name: its path relative to the version folder.
        kind: ``entry`` (JAX's) or ``executable`` (the executable store's).
        size: bytes.
        sha256: hex digest of its bytes; what every transfer is checked against.
        module: the kernel's module name (``jit_lsq_iterate``).
        platform: the platform it was compiled for; None when unknown.
        compile_seconds: what compiling it cost (measured, or JAX's whole seconds); None when unknown.
        compression: entries: ``zlib`` or ``zstd``; None for executables.
        keyed_path: entries of a jaxlib that hashes the folder path: the folder
            in its key, or None when the key has no path (XLA's sub-caches off).
        keyed_path_known: False when that could not be read from the entry.
        cpu: executables: the host CPU fingerprint in its key (CPU only); None when unknown.
        device_kind: executables: the kind of device it was compiled for, when recorded.
        device_count: executables: how many devices the writing process had, when recorded.
        written: when it was written (seconds since the epoch).
    """

    name: str
    kind: Kind
    size: int
    sha256: str
    module: str
    platform: str | None = None
    compile_seconds: float | None = None
    compression: str | None = None
    keyed_path: str | None = None
    keyed_path_known: bool = True
    cpu: str | None = None
    device_kind: str | None = None
    device_count: int | None = None
    written: float = 0.0

    @property
    def key(self) -> str:
        """JAX's key for an entry (``<module>-<hash>``), the store's hash for an executable."""
        if self.kind == "entry":
            return self.name[: -len(jaxformat.CACHE_SUFFIX)]
        return self.name[len(_EXECUTABLE_PREFIX): -len(exeformat.SUFFIX)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "size": self.size, "sha256": self.sha256,
            "module": self.module, "platform": self.platform, "compile_seconds": self.compile_seconds,
            "compression": self.compression, "keyed_path": self.keyed_path,
            "keyed_path_known": self.keyed_path_known, "cpu": self.cpu, "device_kind": self.device_kind,
            "device_count": self.device_count, "written": self.written,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObjectRecord:
        """A record read from a manifest, every field checked.

        Raises:
            ValueError: a missing or mistyped field, or a name that is not an entry's or a stored executable's.
        """
        get = data.get
        name = get("name")
        kind = valid_name(name)  # type: ignore[arg-type]
        if kind is None or get("kind") != kind:
            raise ValueError(f"not an object name jaxcache transfers: {name!r}")
        sha, size = get("sha256"), get("size")
        if type(sha) is not str or not _SHA256_RE.fullmatch(sha):
            raise ValueError(f"{name}: bad sha256")
        if type(size) is not int or size < 0:
            raise ValueError(f"{name}: bad size")
        texts = [get(f) for f in _TEXT_FIELDS]
        numbers = [get(f) for f in _NUMBER_FIELDS]
        count = get("device_count")
        if any(t is not None and type(t) is not str for t in texts) \
                or any(n is not None and type(n) not in (int, float) for n in numbers) \
                or (count is not None and type(count) is not int):
            raise ValueError(f"{name}: a field of the wrong type")
        module, platform, compression, keyed_path, cpu, device_kind = texts
        seconds, written = numbers
        return cls(name=name, kind=kind, size=size, sha256=sha, module=module or "?",  # type: ignore[arg-type]
                   platform=platform, compile_seconds=None if seconds is None else float(seconds),
                   compression=compression, keyed_path=keyed_path, keyed_path_known=get("keyed_path_known", True) is True,
                   cpu=cpu, device_kind=device_kind, device_count=count, written=float(written or 0.0))


_TEXT_FIELDS = ("module", "platform", "compression", "keyed_path", "cpu", "device_kind")
_NUMBER_FIELDS = ("compile_seconds", "written")


def _text(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{data.get('name')}: {name} must be text")
    return value


def _number(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{data.get('name')}: {name} must be a number")
    return float(value)


@dataclass(frozen=True)
class Manifest:
    """The objects of one version folder, as one pusher (or one bundle) saw them.

    Attributes:
        jaxlib: the jaxlib version whose folder this describes.
        jax: the jax version, when known.
        path_in_key: whether that jaxlib hashes the cache folder path into every key.
        objects: the records, sorted by name.
        created: when the manifest was made.
        writer: who made it (``host:pid``), for people reading the remote.
        supersedes: the names of earlier manifests whose every record this one
            also holds (a remote's readers then skip them).
    """

    jaxlib: str
    jax: str | None
    path_in_key: bool
    objects: tuple[ObjectRecord, ...]
    created: float = field(default_factory=time.time)
    writer: str = ""
    supersedes: tuple[str, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def by_name(self) -> dict[str, ObjectRecord]:
        return {o.name: o for o in self.objects}

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "jaxlib": self.jaxlib, "jax": self.jax, "path_in_key": self.path_in_key,
            "created": self.created, "writer": self.writer, "supersedes": list(self.supersedes),
            "objects": [o.as_dict() for o in self.objects],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """A manifest read from a remote or a bundle.

        Raises:
            TrustError: not a manifest of a format this jaxcache reads, or a bad record in it.
        """
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not a jaxcache manifest of a known format")
            jaxlib = data.get("jaxlib")
            if not isinstance(jaxlib, str) or not jaxlib or "/" in jaxlib:
                raise ValueError("bad jaxlib version")
            objects = [ObjectRecord.from_dict(o) for o in data.get("objects", [])]
            supersedes = data.get("supersedes", [])
            if not isinstance(supersedes, list) or not all(isinstance(s, str) for s in supersedes):
                raise ValueError("bad supersedes list")
            return cls(jaxlib=jaxlib, jax=_text(data, "jax"), path_in_key=bool(data.get("path_in_key", True)),
                       objects=tuple(sorted(objects, key=lambda o: o.name)),
                       created=_number(data, "created") or 0.0, writer=str(data.get("writer", "")),
                       supersedes=tuple(supersedes))
        except (ValueError, TypeError, AttributeError) as e:
            raise TrustError(f"unreadable manifest: {e}") from None


def merge(manifests: Iterable[Manifest]) -> dict[str, ObjectRecord]:
    """Every object any of the manifests names, by name.

    Two pushers can hold different bytes under one name (an entry's header
    holds its compile time; a stored executable's, its write time): both are
    valid, and the record with the smaller SHA-256 wins, so every reader picks
    the same one whatever the order.
    """
    merged: dict[str, ObjectRecord] = {}
    for manifest in manifests:
        for record in manifest.objects:
            have = merged.get(record.name)
            if have is None or record.sha256 < have.sha256:
                merged[record.name] = record
    return merged
