"""The fleet's errors: each is a :class:`jaxcache.errors.JaxCacheError`, so the CLI maps it in one place."""

from __future__ import annotations

from jaxcache.errors import JaxCacheError, UsageError


class RemoteError(JaxCacheError):
    """The remote cannot be reached, read or written (network, credentials, permissions)."""


class MissingExtra(JaxCacheError):
    """A remote scheme whose fsspec backend is not installed (``pip install 'jaxcache[s3]'``)."""


class BadRemote(UsageError):
    """A remote that is not a path, ``s3://bucket/prefix`` or ``gs://bucket/prefix``."""


class TrustError(JaxCacheError):
    """A manifest that fails its signature check, or an unsigned one where a signature is required."""


class IntegrityError(JaxCacheError):
    """Objects whose bytes do not match the manifest (tampered, truncated): never written locally."""


class BundleError(JaxCacheError):
    """A bundle that is not one, or is truncated or altered: nothing is imported."""
