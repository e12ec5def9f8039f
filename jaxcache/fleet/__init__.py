"""One warm serves a fleet: push a cache to a remote, pull it on every node, or carry it as a bundle.

Modules, each one idea: `manifest` (what each object is), `local` (a version
folder described), `node` (what this node can hit), `trust` (signed
manifests), `remote` (paths and object stores through fsspec), `catalog` (a
remote's manifests without a lock), `transfer` (many objects in flight, each
checked), `sync` (push and pull plans), `bundle` (export and import).
"""

from __future__ import annotations

from jaxcache.fleet.errors import BadRemote, BundleError, IntegrityError, MissingExtra, RemoteError, TrustError
from jaxcache.fleet.manifest import Manifest, ObjectRecord, merge
from jaxcache.fleet.node import Node, this_node, verdict
from jaxcache.fleet.sync import (
    Damage,
    PullPlan,
    PullResult,
    PushPlan,
    PushResult,
    plan_pull,
    plan_push,
    policy_for,
    pull,
    push,
)
from jaxcache.fleet.trust import Policy, load_key

__all__ = [
    "BadRemote", "BundleError", "Damage", "IntegrityError", "Manifest", "MissingExtra", "Node", "ObjectRecord",
    "Policy", "PullPlan", "PullResult", "PushPlan", "PushResult", "RemoteError", "TrustError", "load_key", "merge",
    "plan_pull", "plan_push", "policy_for", "pull", "push", "this_node", "verdict",
]
