"""A remote's manifests: how pushers add to them without a lock, and how a puller reads them cheaply.

Layout, one folder per jaxlib version as in a local cache::

    REMOTE/jaxlib-0.10.2/objects/<sha256>              every object, named by its content
    REMOTE/jaxlib-0.10.2/manifests/<time>-<host>-<pid>-<random>.json.gz
                                                       immutable manifests, one per push
    REMOTE/jaxlib-0.10.2/HEAD.json                     the manifests a reader needs (a hint)

Objects are named by their SHA-256, so two pushers never overwrite each
other's bytes, and a retried upload is the same object. A push writes a new
manifest holding everything it read plus what it adds, naming the manifests
it read in ``supersedes``; manifests are never rewritten. Two pushers at once
each write their own manifest, and a reader merges every manifest that no
other supersedes: nothing is lost, and no lock is needed (none that every node
and every store honours exists).

``HEAD.json`` names those live manifests, so a reader whose copies of them
are current (manifests are immutable: cached locally by name) needs one small
read. A pusher writes its manifest, then HEAD, then lists the manifests again
and rewrites HEAD until the listing holds nothing it has not accounted for;
since S3, GCS and POSIX folders list what was written before, the last HEAD
written names every manifest written before it. A reader that finds HEAD
naming something it cannot use (missing, or not signed where it needs
signatures) lists the manifests itself.

Trust (`jaxcache.fleet.trust`): a reader with a key uses only manifests signed
with it, and honours ``supersedes`` only from those, so an unsigned manifest
can neither add objects nor hide signed ones.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

from jaxcache.fleet import trust
from jaxcache.fleet.errors import BadRemote, RemoteError, TrustError
from jaxcache.fleet.local import write_atomically
from jaxcache.fleet.manifest import Manifest, ObjectRecord, merge
from jaxcache.fleet.remote import Store

logger = logging.getLogger(__name__)

HEAD_NAME = "HEAD.json"
MANIFESTS = "manifests"
OBJECTS = "objects"
SUFFIX = ".json.gz"
HEAD_FORMAT = 1
_MAX_ROUNDS = 20
_NAME_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,200}\.json\.gz")
GC_GRACE_SECS = 600.0
"""A superseded manifest is deleted only this long after the manifest that supersedes it was written."""


def version_prefix(jaxlib: str) -> str:
    return f"jaxlib-{jaxlib}"


def object_name(jaxlib: str, sha256: str) -> str:
    return f"{version_prefix(jaxlib)}/{OBJECTS}/{sha256}"


def _manifest_path(jaxlib: str, name: str) -> str:
    return f"{version_prefix(jaxlib)}/{MANIFESTS}/{name}"


def _head_path(jaxlib: str) -> str:
    return f"{version_prefix(jaxlib)}/{HEAD_NAME}"


def new_manifest_name(now: float | None = None) -> str:
    """Unique without coordination: time, host, process and 48 random bits; sorts by time."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:]
    host = re.sub(r"[^0-9A-Za-z.-]", "-", socket.gethostname())[:40] or "host"
    return f"{stamp}Z-{host}-{os.getpid()}-{os.urandom(6).hex()}{SUFFIX}"


def encode(manifest: Manifest, key: bytes | None) -> bytes:
    envelope = trust.seal(manifest.as_dict(), key)
    return gzip.compress(json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode(), 6, mtime=0)


def decode(data: bytes, policy: trust.Policy, *, what: str) -> tuple[Manifest, trust.Status]:
    """A manifest and its signature status.

    Raises:
        TrustError: unreadable, signed with another key, altered, or refused by strict mode.
    """
    try:
        envelope = json.loads(gzip.decompress(data))
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        raise TrustError(f"{what}: unreadable manifest ({e})") from None
    body, status = trust.unseal(envelope, policy, what=what)
    try:
        return Manifest.from_dict(body), status
    except TrustError as e:
        raise TrustError(f"{what}: {e}") from None


@dataclass(frozen=True)
class Catalog:
    """What a remote holds for one jaxlib version, as this reader may use it.

    Attributes:
        remote: the remote's URL.
        jaxlib: the version.
        manifests: the live manifests merged, by name.
        records: every object they name, by object name (see `jaxcache.fleet.manifest.merge`).
        statuses: each used manifest's signature status.
        ignored: (manifest, why) for manifests left out (unsigned where a key is set, for another version).
        reads: how many requests reading it took.
        listed: whether the manifests had to be listed (HEAD missing or not usable as it was).
    """

    remote: str
    jaxlib: str
    manifests: tuple[str, ...]
    records: dict[str, ObjectRecord] = field(hash=False)
    statuses: dict[str, trust.Status] = field(hash=False)
    ignored: tuple[tuple[str, str], ...] = ()
    reads: int = 0
    listed: bool = False
    raw: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False, hash=False)
    summary: tuple[int, int] | None = None  # (objects, bytes) where ``records`` was not loaded (an unchanged remote)

    @property
    def signed(self) -> bool:
        """Whether every manifest used is signed with this reader's key (and there is at least one)."""
        return bool(self.statuses) and all(s == "signed" for s in self.statuses.values())

    def as_dict(self) -> dict[str, Any]:
        objects, size = self.summary or (len(self.records), sum(r.size for r in self.records.values()))
        return {"remote": self.remote, "jaxlib": self.jaxlib, "manifests": list(self.manifests),
                "objects": objects, "bytes": size,
                "signed": self.signed, "statuses": dict(self.statuses),
                "ignored": [{"manifest": n, "reason": r} for n, r in self.ignored],
                "reads": self.reads, "listed": self.listed}


class _Reader:
    """Reads manifests, each at most once: from the local copy when there is one, else the store."""

    def __init__(self, store: Store, jaxlib: str, policy: trust.Policy, cache_dir: Path | None) -> None:
        self.store, self.jaxlib, self.policy, self.cache_dir = store, jaxlib, policy, cache_dir
        self.reads = 0
        self.raw: dict[str, bytes | None] = {}
        self.parsed: dict[str, tuple[Manifest, trust.Status] | str] = {}

    def fetch(self, name: str) -> bytes | None:
        if name in self.raw:
            return self.raw[name]
        data = None
        if self.cache_dir is not None:
            try:
                data = (self.cache_dir / name).read_bytes()
            except OSError:
                data = None
        if data is None:
            self.reads += 1
            try:
                data = self.store.read(_manifest_path(self.jaxlib, name))
            except FileNotFoundError:
                data = None
            if data is not None and self.cache_dir is not None:
                try:
                    write_atomically(self.cache_dir / name, data)
                except OSError:
                    pass  # a read-only cache folder: read the store again next time
        self.raw[name] = data
        return data

    def load(self, name: str) -> tuple[Manifest, trust.Status] | str:
        """The manifest and its status, or why it cannot be used. Raises TrustError to refuse."""
        if name not in self.parsed:
            data = self.fetch(name)
            if data is None:
                self.parsed[name] = "gone"
            else:
                manifest, status = decode(data, self.policy, what=f"manifest {name}")
                if manifest.jaxlib != self.jaxlib:
                    self.parsed[name] = f"describes jaxlib {manifest.jaxlib}, not {self.jaxlib}"
                elif status == "unsigned" and self.policy.key is not None:
                    self.parsed[name] = "not signed (a key is set here, so only signed manifests are used)"
                else:
                    self.parsed[name] = (manifest, status)
        return self.parsed[name]

    def supersedes(self, name: str) -> tuple[str, ...]:
        """Structural only (no trust): what HEAD needs to know about any manifest."""
        data = self.fetch(name)
        if data is None:
            return ()
        try:
            envelope = json.loads(gzip.decompress(data))
            return tuple(s for s in envelope["manifest"].get("supersedes", []) if isinstance(s, str))
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
            return ()


def _live(names: list[str], reader: _Reader) -> tuple[dict[str, tuple[Manifest, trust.Status]], list[tuple[str, str]]]:
    usable: dict[str, tuple[Manifest, trust.Status]] = {}
    ignored: list[tuple[str, str]] = []
    for name in names:
        loaded = reader.load(name)
        if isinstance(loaded, str):
            if loaded != "gone":
                ignored.append((name, loaded))
        else:
            usable[name] = loaded
    superseded = {s for manifest, _ in usable.values() for s in manifest.supersedes}
    return {n: v for n, v in usable.items() if n not in superseded}, ignored


def list_manifests(store: Store, jaxlib: str) -> list[str]:
    prefix = f"{version_prefix(jaxlib)}/{MANIFESTS}"
    return sorted(n.rsplit("/", 1)[1] for n in store.list(prefix) if _NAME_RE.fullmatch(n.rsplit("/", 1)[1]))


def read_head(store: Store, jaxlib: str) -> list[str] | None:
    """The manifests HEAD names, or None when there is no usable HEAD."""
    try:
        head = json.loads(store.read(_head_path(jaxlib)))
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("format") != HEAD_FORMAT or not isinstance(head.get("manifests"), list):
        return None
    names = [n for n in head["manifests"] if isinstance(n, str) and _NAME_RE.fullmatch(n)]
    return names if len(names) == len(head["manifests"]) else None


def read_catalog(store: Store, jaxlib: str, *, policy: trust.Policy, cache_dir: Path | None = None,
                 head: list[str] | None | EllipsisType = ...) -> Catalog:
    """What the remote holds for ``jaxlib`` that this reader may use.

    Args:
        store: the remote.
        jaxlib: the version folder to read.
        policy: the signature policy.
        cache_dir: a local folder keeping copies of manifests already read
            (they never change), so an unchanged remote costs one small read.
        head: HEAD's list, when the caller has just read it (None: there is no HEAD; ``...``: read it here).

    Raises:
        TrustError: a manifest signed with another key or altered, or strict mode and an unsigned one.
        RemoteError: the remote cannot be read.
    """
    reader = _Reader(store, jaxlib, policy, cache_dir)
    reader.reads += 1
    if head is ...:
        head = read_head(store, jaxlib)
    listed = False
    live: dict[str, tuple[Manifest, trust.Status]] = {}
    ignored: list[tuple[str, str]] = []
    if head is not None:
        live, ignored = _live(head, reader)
        complete = not ignored and all(not isinstance(reader.parsed.get(n), str) for n in head)
    if head is None or not complete:
        # HEAD is missing, stale, or names a manifest this reader cannot use: the listing decides.
        listed = True
        reader.reads += 1
        names = list_manifests(store, jaxlib)
        if not names:
            reader.reads += 1
            store.require()  # an empty answer from a missing bucket is an error, not "nothing there"
            _refuse_a_jax_cache(store, jaxlib)
        live, ignored = _live(names, reader)
    if cache_dir is not None:
        _forget_others(cache_dir, keep=set(reader.raw))
    manifests = {n: m for n, (m, _) in live.items()}
    return Catalog(
        remote=store.url, jaxlib=jaxlib, manifests=tuple(sorted(manifests)), records=merge(manifests.values()),
        statuses={n: s for n, (_, s) in live.items()}, ignored=tuple(ignored), reads=reader.reads, listed=listed,
        raw={n: reader.raw[n] for n in live if reader.raw.get(n) is not None},
    )


def _refuse_a_jax_cache(store: Store, jaxlib: str) -> None:
    """A remote with no manifest may be a JAX cache itself (a bucket JAX writes into, or a
    local cache folder): pushing objects and manifests into it would leave neither usable.

    Raises:
        BadRemote: the version folder carries jaxcache's version marker, which only caches have.
    """
    from jaxcache.provenance import MARKER_NAME

    try:
        store.read(f"{version_prefix(jaxlib)}/{MARKER_NAME}")
    except (FileNotFoundError, RemoteError):
        return
    raise BadRemote(f"{store.url} is a JAX cache, not a fleet remote (its {version_prefix(jaxlib)} folder is one "
                    f"JAX writes into): give push and pull another place; look into it with "
                    f"`jaxcache --cache-dir {store.url} inspect`")


def remember(cat: Catalog, cache_dir: Path) -> None:
    """Keeps local copies of the manifests a catalog was read from (a read made before the folder existed)."""
    for name, data in cat.raw.items():
        if not (cache_dir / name).is_file():
            try:
                write_atomically(cache_dir / name, data)
            except OSError:
                return


def _forget_others(cache_dir: Path, keep: set[str]) -> None:
    """Drops local copies of manifests this read did not need (superseded ones)."""
    try:
        for path in cache_dir.iterdir():
            if path.name.endswith(SUFFIX) and path.name not in keep:
                path.unlink(missing_ok=True)
    except OSError:
        pass


def publish(store: Store, manifest: Manifest, *, key: bytes | None, cache_dir: Path | None = None,
            policy: trust.Policy | None = None) -> str:
    """Writes a new manifest and brings HEAD up to date; returns the manifest's name.

    The objects it names must already be in the store. See the module docstring
    for why HEAD ends up naming every live manifest however many pushers race.

    Raises:
        RemoteError: the remote cannot be written.
    """
    jaxlib = manifest.jaxlib
    name = new_manifest_name()
    data = encode(manifest, key)
    store.write(_manifest_path(jaxlib, name), data)
    if cache_dir is not None:
        try:
            write_atomically(cache_dir / name, data)
        except OSError:
            pass
    reader = _Reader(store, jaxlib, policy or trust.Policy(key=key), cache_dir)
    reader.raw[name] = data
    for _ in range(_MAX_ROUNDS):
        names = list_manifests(store, jaxlib)
        if name not in names:
            raise RemoteError(f"{store.url}: the manifest just written is not listed; "
                              "this store does not list what was written before (not supported)")
        superseded = {s for n in names for s in reader.supersedes(n)}
        live = [n for n in names if n not in superseded]
        head = {"format": HEAD_FORMAT, "manifests": live, "updated": time.time()}
        store.write(_head_path(jaxlib), json.dumps(head, indent=1).encode())
        if set(list_manifests(store, jaxlib)) <= set(names):
            break
    else:
        logger.warning("HEAD of %s kept changing under concurrent pushes; readers will list manifests", store.url)
    _collect_garbage(store, jaxlib, reader, names)
    return name


def _collect_garbage(store: Store, jaxlib: str, reader: _Reader, names: list[str]) -> None:
    """Deletes manifests superseded by one this pusher trusts at least as much, once the grace has passed.

    Only manifests this pusher already holds a copy of (the ones its push
    merged) are looked at, so collecting costs no reads: each push deletes what
    the manifests it merged had superseded. A keyed pusher never deletes a
    signed manifest that only an unsigned one supersedes (a keyed reader would
    lose it), and nothing is deleted until readers holding an older HEAD have
    had time to read it (a reader that misses one lists again).
    """
    now = time.time()
    listed = set(names)
    for name in names:
        if name not in reader.raw and (reader.cache_dir is None or not (reader.cache_dir / name).is_file()):
            continue
        try:
            loaded = reader.load(name)
        except TrustError:
            continue
        if isinstance(loaded, str):
            continue
        manifest, status = loaded
        if now - manifest.created < GC_GRACE_SECS:
            continue
        for old in manifest.supersedes:
            if old not in listed or old == name:
                continue
            if status != "signed" and _is_signed(_peek(store, jaxlib, old)):
                continue
            try:
                store.delete(_manifest_path(jaxlib, old))
            except RemoteError as e:
                logger.debug("cannot delete superseded manifest %s: %s", old, e)
                return


def _peek(store: Store, jaxlib: str, name: str) -> bytes | None:
    try:
        return store.read(_manifest_path(jaxlib, name))
    except (FileNotFoundError, RemoteError):
        return None


def _is_signed(data: bytes | None) -> bool:
    if data is None:
        return False
    try:
        return json.loads(gzip.decompress(data)).get("signature") is not None
    except (OSError, EOFError, ValueError, AttributeError):
        return True  # unreadable: keep it


def cache_dir_for(meta: Path, remote_url: str) -> Path:
    """Where manifests read from one remote are kept under a version folder's fleet state."""
    return meta / "remotes" / hashlib.sha256(remote_url.encode()).hexdigest()[:16]
