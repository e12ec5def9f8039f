"""``push`` and ``pull``: plan first (what moves, what does not and why), then execute.

A layered cache, like sccache's chain: JAX reads and writes the fast local
folder; ``pull`` brings in what this node can hit and does not have; ``push``
sends what is here and not there. Both work per jaxlib version folder, as the
local layout does. `plan_pull` with nothing new costs one small read (see
`jaxcache.fleet.catalog`); a plan is exactly what ``--dry-run`` prints.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxcache import jaxformat, provenance
from jaxcache.configuration import prepare_folder
from jaxcache.errors import JaxCacheError
from jaxcache.fleet import catalog as catalogs
from jaxcache.fleet import local, trust
from jaxcache.fleet.catalog import Catalog
from jaxcache.fleet.local import Described
from jaxcache.fleet.manifest import Manifest, ObjectRecord
from jaxcache.fleet.node import Node, this_node, verdict
from jaxcache.fleet.remote import Store, open_store
from jaxcache.fleet.transfer import Progress, Transferred, check_remote, fetch_into, upload_from
from jaxcache.settings import Settings

DEFAULT_JOBS = 16


def policy_for(settings: Settings, *, key_file: str | None = None, strict: bool = False) -> trust.Policy:
    """The signature policy: the fleet key if one is set, strict from the flag or the ``strict`` setting."""
    return trust.Policy(key=trust.load_key(key_file), strict=strict or bool(settings.strict.value))


def _writer() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Damage:
    """An object the remote's manifests name whose bytes are not there as named.

    Attributes:
        name: its name in the version folder.
        sha256: the remote object the manifests name (``REMOTE/jaxlib-X/objects/<sha256>``).
        problem: ``missing``; ``size`` (listed at another size than the manifest's); or ``content``
            (read back by ``--verify``: other bytes, whatever their size).
        detail: one line for people.
        heal: whether this push heals it (this folder holds a complete object by that name).
    """

    name: str
    sha256: str
    problem: str
    detail: str
    heal: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "problem": self.problem, "detail": self.detail,
                "heal": self.heal}


def _listing_damage(record: ObjectRecord, listed: int | None, *, heal: bool) -> Damage:
    if listed is None:
        return Damage(record.name, record.sha256, "missing", "missing from the remote", heal)
    return Damage(record.name, record.sha256, "size",
                  f"{listed} bytes on the remote, the manifest says {record.size}", heal)


@dataclass(frozen=True)
class PushPlan:
    """What a push will send.

    Attributes:
        remote: the remote's URL.
        jaxlib: the version folder pushed.
        folder: the local version folder.
        send: objects the remote's manifests do not name yet (each is uploaded, then named).
        repair: this folder's objects whose remote copy is damaged (see ``damaged``): uploaded
            again, and named anew where this folder holds other bytes under the name than those named.
        already: how many of this folder's objects the remote already names and holds (as far as checked).
        refused: (name, why) for local objects never sent (incomplete or damaged).
        catalog: what the remote holds, as read.
        damaged: every object the manifests name that is missing or damaged on the remote, healed by
            this push or not: from the listing (missing, another size), and with ``verify`` from its bytes.
        verified: how many remote objects were read back and hashed; None without ``verify``.
        unchecked: (name, why) for objects ``verify`` could not read (network, permissions): not judged.
    """

    remote: str
    jaxlib: str
    folder: Path
    send: tuple[ObjectRecord, ...]
    repair: tuple[ObjectRecord, ...]
    already: int
    refused: tuple[tuple[str, str], ...]
    catalog: Catalog
    store: Store = field(repr=False, compare=False)
    described: Described = field(repr=False, compare=False)
    remote_sizes: dict[str, int] = field(repr=False, compare=False, default_factory=dict)
    damaged: tuple[Damage, ...] = ()
    verified: int | None = None
    unchecked: tuple[tuple[str, str], ...] = ()
    # SHA-256s whose remote copy verify found damaged: uploaded even where the listing shows the right size.
    forced: frozenset[str] = field(repr=False, compare=False, default=frozenset())

    @property
    def uploads(self) -> tuple[ObjectRecord, ...]:
        """What must travel: objects a killed push already left in the store (content-addressed,
        so the same bytes) are not sent again."""
        return tuple(r for r in self.send + self.repair
                     if r.sha256 in self.forced or self.remote_sizes.get(r.sha256) != r.size)

    @property
    def bytes(self) -> int:
        return sum(r.size for r in self.uploads)

    @property
    def unhealed(self) -> tuple[Damage, ...]:
        """Damaged objects this push cannot heal: not in this folder (or not selected), or refused here."""
        return tuple(d for d in self.damaged if not d.heal)

    def as_dict(self) -> dict[str, Any]:
        return {
            "remote": self.remote, "jaxlib": self.jaxlib, "folder": str(self.folder),
            "send": [r.name for r in self.send], "repair": [r.name for r in self.repair],
            "already": self.already, "bytes": self.bytes,
            "refused": [{"name": n, "reason": r} for n, r in self.refused],
            "damaged": [d.as_dict() for d in self.damaged], "verified": self.verified,
            "unchecked": [{"name": n, "reason": r} for n, r in self.unchecked],
            "remote_manifests": self.catalog.as_dict(),
        }


@dataclass(frozen=True)
class PushResult:
    plan: PushPlan
    transferred: Transferred
    manifest: str | None  # the manifest written, None when there was nothing to name

    @property
    def healed(self) -> tuple[str, ...]:
        """The damaged objects this push re-sent (now whole on the remote, and named)."""
        done = set(self.transferred.done)
        return tuple(r.name for r in self.plan.repair if r.name in done)

    @property
    def ok(self) -> bool:
        return not self.transferred.failed and not self.plan.unchecked

    def as_dict(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "transferred": self.transferred.as_dict(), "manifest": self.manifest,
                "healed": list(self.healed), "ok": self.ok}


def plan_push(settings: Settings, remote: str | Store, *, version: str | None = None, name: str | None = None,
              policy: trust.Policy | None = None, jobs: int = DEFAULT_JOBS, verify: bool = False,
              progress: Progress | None = None) -> PushPlan:
    """What pushing one version folder of this cache to ``remote`` would send, and heal.

    Objects are skipped by name, so a push also checks that what the manifests name is
    there: an object missing from the listing, or listed at another size than its
    manifest's, is re-sent when this folder holds that name. With ``verify``, every
    other remote object this folder holds a name for is read back and hashed too (an
    overwrite or a flipped bit keeps the size); nothing is written by planning.

    Args:
        settings: the local cache's settings.
        remote: a ``REMOTE`` string or an open store.
        version: the jaxlib version folder to push (default: the installed jaxlib's).
        name: only objects whose module name matches this glob.
        policy: the signature policy; a keyed pusher merges only manifests signed with its key.
        jobs: transfers in flight (for the store's connection pool, and ``verify``'s reads).
        verify: read back and hash the remote copies of this folder's objects.
        progress: called after each object ``verify`` reads.

    Raises:
        CacheDirError: no such version folder here.
        TrustError: the remote holds a manifest signed with another key, or altered.
        RemoteError: the remote cannot be read.
    """
    policy = policy or trust.Policy()
    store = remote if not isinstance(remote, str) else open_store(remote, concurrency=jobs)
    jaxlib = version or _installed_jaxlib()
    folder = local.version_folder(settings.root, jaxlib)
    described = local.describe(folder, name=name)
    cat = catalogs.read_catalog(store, jaxlib, policy=policy,
                                cache_dir=catalogs.cache_dir_for(local.meta_dir(folder), store.url))
    present = store.list(f"{catalogs.version_prefix(jaxlib)}/{catalogs.OBJECTS}")
    have = {n.rsplit("/", 1)[1]: size for n, size in present.items()}
    send: list[ObjectRecord] = []
    repair: list[ObjectRecord] = []
    damaged: list[Damage] = []
    listed_whole: list[ObjectRecord] = []
    for record in described.objects:
        theirs = cat.records.get(record.name)
        if theirs is None:
            send.append(record)
        elif have.get(theirs.sha256) != theirs.size:
            # Named, but its object is missing or cut short. This folder's copy is complete (described)
            # and valid under the name whether its bytes are the same or not (see `push`).
            damaged.append(_listing_damage(theirs, have.get(theirs.sha256), heal=True))
            repair.append(record)
        else:
            listed_whole.append(theirs)
    ours = {r.name for r in described.objects}
    for other, theirs in sorted(cat.records.items()):
        if other not in ours and have.get(theirs.sha256) != theirs.size:
            damaged.append(_listing_damage(theirs, have.get(theirs.sha256), heal=False))
    already = len(listed_whole)
    verified: int | None = None
    unchecked: tuple[tuple[str, str], ...] = ()
    forced: set[str] = set()
    if verify:
        with _scratch(folder) as scratch:
            checked = check_remote(store, jaxlib, listed_whole, scratch, jobs=jobs, progress=progress)
        verified = len(checked.sound) + len(checked.damaged)
        unchecked = checked.failed
        bad = {n: (problem, why) for n, problem, why in checked.damaged}
        for record in described.objects:
            if record.name in bad:
                problem, why = bad[record.name]
                damaged.append(Damage(record.name, cat.records[record.name].sha256, problem, why, True))
                repair.append(record)
                forced.add(record.sha256)
                already -= 1
    return PushPlan(remote=store.url, jaxlib=jaxlib, folder=folder, send=tuple(send),
                    repair=tuple(sorted(repair, key=lambda r: r.name)),
                    already=already, refused=described.refused, catalog=cat,
                    store=store, described=described, remote_sizes=have,
                    damaged=tuple(sorted(damaged, key=lambda d: (not d.heal, d.name))), verified=verified,
                    unchecked=unchecked, forced=frozenset(forced))


@contextmanager
def _scratch(folder: Path) -> Iterator[Path]:
    """Where ``verify``'s reads land: beside the cache, on the disk sized for its objects; the
    system's temporary folder where the cache cannot be written (pushing from a read-only copy)."""
    path = local.meta_dir(folder) / "verify"
    try:
        path.mkdir(parents=True, exist_ok=True)
        usable = os.access(path, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if usable:
        try:
            yield path
        finally:
            try:
                path.rmdir()  # empty once every read was checked and dropped; else kept for a look
            except OSError:
                pass
        return
    with tempfile.TemporaryDirectory(prefix="jaxcache-verify-") as tmp:
        yield Path(tmp)


def push(plan: PushPlan, *, key: bytes | None = None, jobs: int = DEFAULT_JOBS,
         progress: Progress | None = None) -> PushResult:
    """Uploads what the plan sends and repairs, then writes one manifest naming what arrived.

    The manifest is written only after its objects are all in the store, so a
    reader never meets a name without its object. A push killed midway leaves
    uploaded objects that no manifest names yet; pushing again finds them and
    does not upload them twice. A repair with the same bytes as those named
    needs no manifest: the object is whole again under its name.
    """
    uploads = plan.uploads
    skipped = {r.name for r in plan.send + plan.repair} - {r.name for r in uploads}
    transferred = upload_from(plan.store, plan.jaxlib, uploads, plan.folder, jobs=jobs, progress=progress)
    arrived = set(transferred.done) | skipped
    new = [r for r in plan.send if r.name in arrived]
    # A damaged object healed with other bytes than those named (this folder's entry was written by
    # another process: its header holds its own compile time) must be named anew. The manifest
    # written supersedes every one this push read, so the damaged record is no longer live.
    renamed = [r for r in plan.repair if r.name in arrived and plan.catalog.records[r.name].sha256 != r.sha256]
    transferred = Transferred(done=tuple(sorted(arrived)), failed=transferred.failed, bytes=transferred.bytes,
                              seconds=transferred.seconds)
    if not new and not renamed:
        return PushResult(plan=plan, transferred=transferred, manifest=None)
    records = dict(plan.catalog.records)
    records.update((r.name, r) for r in new + renamed)
    manifest = Manifest(jaxlib=plan.jaxlib, jax=plan.described.jax, path_in_key=jaxformat.path_in_key(plan.jaxlib),
                        objects=tuple(sorted(records.values(), key=lambda r: r.name)), writer=_writer(),
                        supersedes=plan.catalog.manifests)
    name = catalogs.publish(plan.store, manifest, key=key,
                            cache_dir=catalogs.cache_dir_for(local.meta_dir(plan.folder), plan.store.url),
                            policy=trust.Policy(key=key))
    return PushResult(plan=plan, transferred=transferred, manifest=name)


@dataclass(frozen=True)
class PullPlan:
    """What a pull will bring in, and what it leaves out and why.

    Attributes:
        remote: the remote's URL.
        folder: the local folder JAX writes into.
        node: this node's profile.
        fetch: objects to download.
        here: how many of the remote's objects this folder already has.
        skipped: (name, why) for objects this node can never hit.
        catalog: what the remote holds, as read.
    """

    remote: str
    folder: Path
    node: Node
    fetch: tuple[ObjectRecord, ...]
    here: int
    skipped: tuple[tuple[str, str], ...]
    catalog: Catalog
    store: Store = field(repr=False, compare=False)
    capped: bool = False
    policy: trust.Policy | None = field(default=None, repr=False, compare=False)

    @property
    def bytes(self) -> int:
        return sum(r.size for r in self.fetch)

    def as_dict(self) -> dict[str, Any]:
        return {
            "remote": self.remote, "folder": str(self.folder), "node": self.node.as_dict(),
            "fetch": [r.name for r in self.fetch], "bytes": self.bytes, "here": self.here,
            "skipped": [{"name": name, "reason": why} for name, why in self.skipped],
            "remote_manifests": self.catalog.as_dict(),
        }


@dataclass(frozen=True)
class PullResult:
    plan: PullPlan
    transferred: Transferred

    @property
    def ok(self) -> bool:
        return not self.transferred.failed

    def as_dict(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "transferred": self.transferred.as_dict(), "ok": self.ok}


def plan_pull(settings: Settings, remote: str | Store, *, policy: trust.Policy | None = None,
              jobs: int = DEFAULT_JOBS) -> PullPlan:
    """What pulling from ``remote`` into this cache would bring in. Creates nothing locally
    except the copies of manifests read, when the folder exists.

    With nothing new, this is one small read (HEAD) and a listing of the local
    folder: when HEAD names the manifests the last complete pull used, under
    the same node profile and signature policy, and every object that pull
    wanted is still here, the manifests are not even parsed again (see `_unchanged`).

    Raises:
        NotACacheError: the local folder holds other files and is not a cache.
        TrustError: a manifest signed with another key or altered; strict mode and an unsigned one.
        RemoteError: the remote cannot be read.
    """
    from jaxcache.scanning import require_cache_or_new

    policy = policy or trust.Policy()
    require_cache_or_new(settings.root)
    store = remote if not isinstance(remote, str) else open_store(remote, concurrency=jobs)
    versions = provenance.installed_versions()
    folder = provenance.jax_dir(settings.root, settings.layout.value, versions)
    node = this_node(folder, xla_caches=settings.xla_caches.value, layout=settings.layout.value)
    cache_dir = catalogs.cache_dir_for(local.meta_dir(folder), store.url) if folder.is_dir() else None
    capped = settings.max_size.value != -1
    head = catalogs.read_head(store, node.jaxlib)
    if cache_dir is not None and head is not None:
        plan = _unchanged(cache_dir, head, node, policy, folder, store, capped=capped)
        if plan is not None:
            return plan
    cat = catalogs.read_catalog(store, node.jaxlib, policy=policy, cache_dir=cache_dir, head=head)
    plan = plan_from_records(cat, node, folder, store=store, capped=capped, policy=policy)
    if cache_dir is not None and not plan.fetch:
        _remember_complete(cache_dir, plan, policy)
    return plan


_STATE = "last-pull.json"


def _state_key(node: Node, policy: trust.Policy) -> dict[str, Any]:
    return {"node": node.as_dict(), "policy": policy.as_dict()}


def _remember_complete(cache_dir: Path, plan: PullPlan, policy: trust.Policy) -> None:
    """Records what a pull that left nothing to fetch used, for `_unchanged` (best effort)."""
    if plan.catalog.listed or plan.catalog.ignored:
        return  # HEAD alone did not describe the remote: read it in full next time
    state = {**_state_key(plan.node, policy), "head": list(plan.catalog.manifests),
             "wanted": sorted(set(plan.catalog.records) - {n for n, _ in plan.skipped}),
             "skipped": [list(s) for s in plan.skipped], "catalog": plan.catalog.as_dict()}
    try:
        local.write_atomically(cache_dir / _STATE, json.dumps(state).encode())
    except OSError:
        pass


def _unchanged(cache_dir: Path, head: list[str], node: Node, policy: trust.Policy, folder: Path, store: Store, *,
               capped: bool) -> PullPlan | None:
    """The plan of a pull with nothing new, from the last complete pull's record, or None.

    Sound because manifests never change (a new push writes a new one, so HEAD
    changes), the verdicts depend only on the node and the policy (both in the
    record), and the local listing is taken now.
    """
    try:
        state = json.loads((cache_dir / _STATE).read_bytes())
        if state.get("head") != head or {k: state.get(k) for k in ("node", "policy")} != _state_key(node, policy):
            return None
        wanted = state["wanted"]
        present = local.present(folder)
        if not all(name in present for name in wanted):
            return None
        summary = state["catalog"]
        cat = Catalog(remote=store.url, jaxlib=node.jaxlib, manifests=tuple(head), records={},
                      statuses=dict(summary["statuses"]), reads=1, summary=(summary["objects"], summary["bytes"]))
        skipped = tuple((str(n), str(why)) for n, why in state["skipped"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return PullPlan(remote=store.url, folder=folder, node=node, fetch=(), here=len(wanted), skipped=skipped,
                    catalog=cat, store=store, capped=capped)


def plan_from_records(cat: Catalog, node: Node, folder: Path, *, store: Store, capped: bool,
                      policy: trust.Policy | None = None) -> PullPlan:
    """The pull plan for a catalog read (shared with bundle imports)."""
    present = local.present(folder) if folder.is_dir() else set()
    path_keyed = jaxformat.path_in_key(cat.jaxlib)
    fetch, skipped = [], []
    here = 0
    for record in sorted(cat.records.values(), key=lambda r: r.name):
        if record.name in present:
            here += 1
            continue
        why = verdict(record, node, path_in_key=path_keyed)
        if why is None:
            fetch.append(record)
        else:
            skipped.append((record.name, why))
    return PullPlan(remote=cat.remote, folder=folder, node=node, fetch=tuple(fetch), here=here,
                    skipped=tuple(skipped), catalog=cat, store=store, capped=capped, policy=policy)


def pull(plan: PullPlan, settings: Settings, *, jobs: int = DEFAULT_JOBS, progress: Progress | None = None) -> PullResult:
    """Downloads what the plan fetches; each object is checked and enters whole (see `jaxcache.fleet.transfer`).

    Raises:
        CacheDirError: the local folder cannot be created, locked or written.
    """
    if not plan.fetch:
        return PullResult(plan=plan, transferred=Transferred(done=(), failed=(), bytes=0, seconds=0.0))
    folder, _ = prepare_folder(settings)
    if folder != plan.folder:
        raise JaxCacheError(f"the cache folder changed since the plan ({plan.folder} -> {folder})")
    catalogs.remember(plan.catalog, catalogs.cache_dir_for(local.meta_dir(folder), plan.store.url))
    transferred = fetch_into(plan.store, plan.catalog.jaxlib, plan.fetch, folder, jobs=jobs, capped=plan.capped,
                             progress=progress)
    if not transferred.failed:
        _remember_complete(catalogs.cache_dir_for(local.meta_dir(folder), plan.store.url), plan,
                           plan.policy if plan.policy is not None else trust.Policy())
    return PullResult(plan=plan, transferred=transferred)


def _installed_jaxlib() -> str:
    versions = provenance.installed_versions()
    if versions is None:
        raise JaxCacheError("jaxlib is not installed in this environment; name the folder to push with --version")
    return versions.jaxlib
