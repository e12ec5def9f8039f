"""Bundles: one file that carries a version folder's objects and their manifest.

For machines that share no remote (air-gapped clusters, a container build
step, an artefact store): ``jaxcache export -o FILE`` writes a tar archive
whose first member is ``MANIFEST.json`` (the manifest envelope of
`jaxcache.fleet.trust`, signed when a fleet key is set) and whose other
members are ``objects/<sha256>``. ``jaxcache import FILE`` reads the manifest,
checks it against this installation (the same verdicts as a pull), checks
every object of the archive against the manifest, and only then writes:
a truncated or altered bundle is refused and nothing is imported. Objects
enter the cache as pulled ones do (`jaxcache.fleet.transfer`).

Members are read by the names jaxcache gives them, never extracted by the
names an archive carries, so an archive cannot write outside the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxcache import atomic, jaxformat, provenance
from jaxcache.configuration import prepare_folder
from jaxcache.fleet import local, trust
from jaxcache.fleet.errors import BundleError, TrustError
from jaxcache.fleet.manifest import Manifest, ObjectRecord
from jaxcache.fleet.node import Node, this_node, verdict, version_verdict
from jaxcache.fleet.transfer import Transferred, enter_all, remove_dead_temps
from jaxcache.settings import Settings

MANIFEST_MEMBER = "MANIFEST.json"
OBJECTS_PREFIX = "objects/"


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote."""

    path: Path
    jaxlib: str
    objects: int
    bytes: int
    signed: bool
    refused: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "jaxlib": self.jaxlib, "objects": self.objects, "bytes": self.bytes,
                "signed": self.signed, "refused": [{"name": n, "reason": r} for n, r in self.refused]}


def export(settings: Settings, output: Path, *, version: str | None = None, name: str | None = None,
           key: bytes | None = None) -> Exported:
    """Writes one version folder's objects (those matching ``name``) and their manifest into ``output``.

    The archive is written beside ``output`` and renamed into place: it is whole or absent.

    Raises:
        CacheDirError: no such version folder.
        BundleError: an object changed while it was being exported, or nothing matches.
        OSError: ``output`` cannot be written.
    """
    import socket

    versions = provenance.installed_versions()
    jaxlib = version or (versions.jaxlib if versions else None)
    if jaxlib is None:
        raise BundleError("jaxlib is not installed here: name the version folder with --version")
    folder = local.version_folder(settings.root, jaxlib)
    described = local.describe(folder, name=name)
    if not described.objects:
        raise BundleError(f"nothing to export from {folder}" + (f" matching {name!r}" if name else ""))
    manifest = described.manifest(writer=f"{socket.gethostname()}:{os.getpid()} (export)")
    envelope = json.dumps(trust.seal(manifest.as_dict(), key), indent=None, separators=(",", ":")).encode()
    output = Path(output).absolute()
    fd, tmp = atomic.create_temp(output.parent)  # a plain write's mode; named so a dead writer's is provable
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST_MEMBER, envelope)
            written: set[str] = set()
            for record in described.objects:
                if record.sha256 in written:
                    continue
                with jaxformat.open_entry(folder / record.name) as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != record.sha256:
                    raise BundleError(f"{record.name} changed while it was exported; export again")
                _add(tar, OBJECTS_PREFIX + record.sha256, data)
                written.add(record.sha256)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Exported(path=output, jaxlib=jaxlib, objects=len(described.objects), bytes=manifest.bytes,
                    signed=key is not None, refused=described.refused)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@contextmanager
def _open(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(path, mode="r:")
    except FileNotFoundError:
        raise BundleError(f"no bundle at {path}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleError(f"{path} is not a jaxcache bundle ({e}); nothing imported") from None
    with tar:
        yield tar


def _member(tar: tarfile.TarFile, name: str, path: Path) -> bytes:
    """A member's bytes, read by the name jaxcache gave it (never a link, never extracted by its own name)."""
    try:
        info = tar.getmember(name)
        if not info.isfile():
            raise BundleError(f"{path}: {name} is not a regular member; nothing imported")
        f = tar.extractfile(info)
        assert f is not None
        data = f.read()
    except KeyError:
        raise BundleError(f"{path} lacks {name} (truncated or altered); nothing imported") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleError(f"{path} is truncated or damaged ({e}); nothing imported") from None
    if len(data) != info.size:
        raise BundleError(f"{path} is truncated ({name} is cut short); nothing imported")
    return data


@dataclass(frozen=True)
class ImportPlan:
    """What importing a bundle will write, and what not and why. Every object has been checked.

    Attributes:
        bundle: the archive.
        manifest: its manifest.
        status: its signature status.
        node: this node.
        folder: the folder JAX writes into here.
        fetch: objects to import.
        here: how many this folder already has.
        skipped: (name, why) for objects this node can never hit.
    """

    bundle: Path
    manifest: Manifest
    status: trust.Status
    node: Node
    folder: Path
    fetch: tuple[ObjectRecord, ...]
    here: int
    skipped: tuple[tuple[str, str], ...]
    capped: bool = False

    @property
    def bytes(self) -> int:
        return sum(r.size for r in self.fetch)

    def as_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "jaxlib": self.manifest.jaxlib, "jax": self.manifest.jax,
                "path_in_key": self.manifest.path_in_key, "signature": self.status, "node": self.node.as_dict(),
                "folder": str(self.folder), "fetch": [r.name for r in self.fetch], "bytes": self.bytes,
                "here": self.here, "skipped": [{"name": name, "reason": why} for name, why in self.skipped]}


def plan_import(settings: Settings, bundle: Path, *, policy: trust.Policy | None = None) -> ImportPlan:
    """Reads and checks a whole bundle, and plans what this node can use of it. Writes nothing.

    Raises:
        BundleError: not a bundle, or truncated or altered (an object that does not match its manifest).
        TrustError: its manifest is signed with another key, or strict mode and it is not signed.
        NotACacheError: the local folder holds other files and is not a cache.
    """
    from jaxcache.scanning import require_cache_or_new

    policy = policy or trust.Policy()
    bundle = Path(bundle)
    require_cache_or_new(settings.root)
    with _open(bundle) as tar:
        try:
            envelope = json.loads(_member(tar, MANIFEST_MEMBER, bundle))
        except ValueError:
            raise BundleError(f"{bundle}: its manifest is not JSON (altered); nothing imported") from None
        body, status = trust.unseal(envelope, policy, what=f"the manifest of {bundle}")
        if status == "unsigned" and policy.key is not None:
            raise TrustError(f"the manifest of {bundle} is not signed, and a fleet key is set here: refused")
        try:
            manifest = Manifest.from_dict(body)
        except TrustError as e:
            raise BundleError(f"{bundle}: {e}; nothing imported") from None
        for record in {r.sha256: r for r in manifest.objects}.values():
            data = _member(tar, OBJECTS_PREFIX + record.sha256, bundle)
            if len(data) != record.size or hashlib.sha256(data).hexdigest() != record.sha256:
                raise BundleError(f"{bundle}: {record.name} does not match its manifest (altered); nothing imported")
    versions = provenance.installed_versions()
    folder = provenance.jax_dir(settings.root, settings.layout.value, versions)
    node = this_node(folder, xla_caches=settings.xla_caches.value, layout=settings.layout.value)
    present = local.present(folder) if folder.is_dir() else set()
    whole = version_verdict(manifest, node)
    fetch, skipped = [], []
    here = 0
    for record in manifest.objects:
        if whole is None and record.name in present:
            here += 1
            continue
        why = whole or verdict(record, node, path_in_key=jaxformat.path_in_key(manifest.jaxlib))
        if why is None:
            fetch.append(record)
        else:
            skipped.append((record.name, why))
    return ImportPlan(bundle=bundle, manifest=manifest, status=status, node=node, folder=folder, fetch=tuple(fetch),
                      here=here, skipped=tuple(skipped), capped=settings.max_size.value != -1)


def import_bundle(plan: ImportPlan, settings: Settings) -> Transferred:
    """Writes what the plan imports: every object staged and checked again, then all entered under the lock.

    Raises:
        BundleError: the bundle changed since the plan and no longer matches; nothing imported.
        CacheDirError: the cache folder cannot be created, locked or written.
    """
    start = time.monotonic()
    if not plan.fetch:
        return Transferred(done=(), failed=(), bytes=0, seconds=0.0)
    folder, _ = prepare_folder(settings)
    if folder != plan.folder:
        raise BundleError(f"the cache folder changed since the plan ({plan.folder} -> {folder})")
    remove_dead_temps(folder)
    if any(r.kind == "executable" for r in plan.fetch):
        (folder / "executables").mkdir(exist_ok=True)
    staged: list[tuple[ObjectRecord, Path]] = []
    try:
        with _open(plan.bundle) as tar:
            for record in plan.fetch:
                data = _member(tar, OBJECTS_PREFIX + record.sha256, plan.bundle)
                if hashlib.sha256(data).hexdigest() != record.sha256:
                    raise BundleError(f"{plan.bundle} changed since it was checked; nothing imported")
                fd, tmp = atomic.create_temp((folder / record.name).parent)
                staged.append((record, tmp))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        enter_all(folder, staged, capped=plan.capped)
    finally:
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)
    return Transferred(done=tuple(r.name for r in plan.fetch), failed=(), bytes=plan.bytes,
                       seconds=time.monotonic() - start)

