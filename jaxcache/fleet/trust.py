"""Signed manifests: a key the fleet shares, HMAC-SHA256 over the manifest's canonical JSON.

A JAX cache is code: whoever can write a manifest and its objects can run code
on every node that pulls them. Every object is checked against its manifest's
SHA-256, so a tampered object is refused; a signature extends that to the
manifest itself, so nodes load only what a holder of the key (CI) pushed.

The key: ``--key-file FILE``, else ``JAXCACHE_FLEET_KEY`` (the key itself),
else ``JAXCACHE_FLEET_KEY_FILE`` (a file holding it). On disk a manifest is an
envelope ``{"format": 1, "signature": {...} | null, "manifest": {...}}``; the
MAC covers ``json.dumps(manifest, sort_keys=True, separators=(",", ":"))``,
which Python reproduces exactly after parsing (floats round-trip).

The policy: with a key, a manifest signed with another key (or altered) is
refused outright, and an unsigned one is ignored with a warning, or refused in
strict mode; without a key, signatures cannot be checked, and strict mode
refuses to use anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jaxcache.errors import UsageError
from jaxcache.fleet.errors import TrustError

KEY_ENV = "JAXCACHE_FLEET_KEY"
KEY_FILE_ENV = "JAXCACHE_FLEET_KEY_FILE"
ALGORITHM = "hmac-sha256"
ENVELOPE_FORMAT = 1
MIN_KEY_BYTES = 16

Status = Literal["signed", "unsigned", "unverified"]
"""A manifest's standing: signed with our key; unsigned; or signed but no key here to check it."""


@dataclass(frozen=True)
class Policy:
    """How a reader treats signatures.

    Attributes:
        key: the shared key, or None.
        strict: refuse anything not signed with ``key`` (and, without a key, everything).
    """

    key: bytes | None = None
    strict: bool = False

    @property
    def key_id(self) -> str | None:
        return key_id(self.key) if self.key is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "strict": self.strict}


def key_id(key: bytes) -> str:
    """A short public name for a key (a hash of it), so messages can say which key signed."""
    return hashlib.sha256(b"jaxcache-fleet-key-id\0" + key).hexdigest()[:16]


def load_key(key_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> bytes | None:
    """The fleet key from ``key_file``, ``JAXCACHE_FLEET_KEY`` or ``JAXCACHE_FLEET_KEY_FILE``; None if none is set.

    Raises:
        UsageError: the key file cannot be read, or the key is shorter than 16 bytes.
    """
    env = os.environ if env is None else env
    where: str
    if key_file is not None:
        raw, where = _read_key_file(Path(key_file)), str(key_file)
    elif env.get(KEY_ENV):
        raw, where = env[KEY_ENV].encode(), KEY_ENV
    elif env.get(KEY_FILE_ENV):
        raw, where = _read_key_file(Path(env[KEY_FILE_ENV])), env[KEY_FILE_ENV]
    else:
        return None
    key = raw.strip()
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(f"the fleet key from {where} is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                         "(e.g. `openssl rand -hex 32`)")
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the fleet key file {path}: {e.strerror}") from None


def canonical(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(manifest: Mapping[str, Any], key: bytes | None) -> dict[str, Any]:
    """The envelope for a manifest, signed when there is a key."""
    signature = None
    if key is not None:
        mac = hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()
        signature = {"algorithm": ALGORITHM, "key_id": key_id(key), "mac": mac}
    return {"format": ENVELOPE_FORMAT, "signature": signature, "manifest": dict(manifest)}


def unseal(envelope: Any, policy: Policy, *, what: str) -> tuple[dict[str, Any], Status]:
    """The manifest inside an envelope, and whether it is signed, checked against the policy.

    Args:
        envelope: the parsed envelope.
        policy: the key and strictness.
        what: names the manifest in messages.

    Returns:
        The manifest (unparsed) and its status. An ``unsigned`` or ``unverified``
        manifest is returned only where the policy allows using it; with a key,
        the caller decides what an unsigned one means (see the module docstring).

    Raises:
        TrustError: not an envelope; signed with another key or altered; or strict
            mode and the manifest is not signed with the key.
    """
    if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT \
            or not isinstance(envelope.get("manifest"), dict):
        raise TrustError(f"{what}: not a jaxcache manifest")
    manifest = envelope["manifest"]
    signature = envelope.get("signature")
    if signature is None:
        if policy.strict:
            raise TrustError(f"{what} is not signed, and strict mode refuses unsigned manifests")
        return manifest, "unsigned"
    if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM \
            or not isinstance(signature.get("mac"), str):
        raise TrustError(f"{what}: unreadable signature")
    if policy.key is None:
        if policy.strict:
            raise TrustError(f"{what} is signed, but no key is set to check it ({KEY_ENV} or {KEY_FILE_ENV}), "
                             "and strict mode refuses what it cannot check")
        return manifest, "unverified"
    expected = hmac.new(policy.key, canonical(manifest), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature["mac"]):
        theirs = signature.get("key_id")
        if theirs != policy.key_id:
            raise TrustError(f"{what} is signed with another key (key id {theirs}; this node's is {policy.key_id}): "
                             "refused")
        raise TrustError(f"{what} does not match its signature (altered after signing): refused")
    return manifest, "signed"
