"""``push`` and ``pull``: plan first (what moves, what does not and why), then execute.

A layered cache, like sccache's chain: JAX reads and writes the fast local
folder; ``pull`` brings in what this node can hit and does not have; ``push``
sends what is here and not there. Both work per jaxlib version folder, as the
local layout does. `plan_pull` with nothing new costs one small read (see
`jaxcache.fleet.catalog`); a plan is exactly what ``--dry-run`` prints.
"""

from __future__ import annotations

import json
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
from jaxcache.fleet.transfer import Progress, Transferred, fetch_into, upload_from
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
class PushPlan:
    """What a push will send.

    Attributes:
        remote: the remote's URL.
        jaxlib: the version folder pushed.
        folder: the local version folder.
        send: objects the remote's manifests do not name yet (each is uploaded, then named).
        repair: objects the manifests name but the remote lacks, which this folder has (uploaded again).
        already: how many of this folder's objects the remote already names.
        refused: (name, why) for local objects never sent (incomplete or damaged).
        catalog: what the remote holds, as read.
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

    @property
    def uploads(self) -> tuple[ObjectRecord, ...]:
        """What must travel: objects a killed push already left in the store (content-addressed,
        so the same bytes) are not sent again."""
        return tuple(r for r in self.send + self.repair if self.remote_sizes.get(r.sha256) != r.size)

    @property
    def bytes(self) -> int:
        return sum(r.size for r in self.uploads)

    def as_dict(self) -> dict[str, Any]:
        return {
            "remote": self.remote, "jaxlib": self.jaxlib, "folder": str(self.folder),
            "send": [r.name for r in self.send], "repair": [r.name for r in self.repair],
            "already": self.already, "bytes": self.bytes,
            "refused": [{"name": n, "reason": r} for n, r in self.refused],
            "remote_manifests": self.catalog.as_dict(),
        }


@dataclass(frozen=True)
class PushResult:
    plan: PushPlan
    transferred: Transferred
    manifest: str | None  # the manifest written, None when there was nothing to name

    @property
    def ok(self) -> bool:
        return not self.transferred.failed

    def as_dict(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "transferred": self.transferred.as_dict(), "manifest": self.manifest,
                "ok": self.ok}


def plan_push(settings: Settings, remote: str | Store, *, version: str | None = None, name: str | None = None,
              policy: trust.Policy | None = None, jobs: int = DEFAULT_JOBS) -> PushPlan:
    """What pushing one version folder of this cache to ``remote`` would send.

    Args:
        settings: the local cache's settings.
        remote: a ``REMOTE`` string or an open store.
        version: the jaxlib version folder to push (default: the installed jaxlib's).
        name: only objects whose module name matches this glob.
        policy: the signature policy; a keyed pusher merges only manifests signed with its key.
        jobs: transfers in flight (for the store's connection pool).

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
    send, repair = [], []
    already = 0
    for record in described.objects:
        theirs = cat.records.get(record.name)
        if theirs is None:
            send.append(record)
        elif have.get(theirs.sha256) != theirs.size and theirs.sha256 == record.sha256:
            repair.append(record)  # named, but its object is missing or cut short: we hold the same bytes
        else:
            already += 1
    return PushPlan(remote=store.url, jaxlib=jaxlib, folder=folder, send=tuple(send), repair=tuple(repair),
                    already=already, refused=described.refused, catalog=cat, store=store, described=described,
                    remote_sizes=have)


def push(plan: PushPlan, *, key: bytes | None = None, jobs: int = DEFAULT_JOBS,
         progress: Progress | None = None) -> PushResult:
    """Uploads what the plan sends, then writes one manifest naming what arrived.

    The manifest is written only after its objects are all in the store, so a
    reader never meets a name without its object. A push killed midway leaves
    uploaded objects that no manifest names yet; pushing again finds them and
    does not upload them twice.
    """
    uploads = plan.uploads
    skipped = {r.name for r in plan.send + plan.repair} - {r.name for r in uploads}
    transferred = upload_from(plan.store, plan.jaxlib, uploads, plan.folder, jobs=jobs, progress=progress)
    arrived = set(transferred.done) | skipped
    new = [r for r in plan.send if r.name in arrived]
    transferred = Transferred(done=tuple(sorted(arrived)), failed=transferred.failed, bytes=transferred.bytes,
                              seconds=transferred.seconds)
    if not new:
        return PushResult(plan=plan, transferred=transferred, manifest=None)
    records = dict(plan.catalog.records)
    records.update((r.name, r) for r in new)
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
