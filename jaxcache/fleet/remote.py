"""Where a fleet's objects live: a folder on a shared filesystem, or an object store through fsspec.

``REMOTE`` is a path (``/shared/jax-fleet``, ``file:///shared/jax-fleet``), or
``s3://bucket/prefix`` (s3fs, ``pip install 'jaxcache[s3]'``), or
``gs://bucket/prefix`` (gcsfs, ``pip install 'jaxcache[gcs]'``). The object
stores are configured the way their own tools are: ``AWS_ENDPOINT_URL`` (for
MinIO, R2, Ceph, GCS's S3 API), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE`` and ``~/.aws``; Google's application default credentials (and, for an
emulator, ``STORAGE_EMULATOR_HOST`` with ``FSSPEC_GCS_TOKEN=anon``: see tests/test_fleet_gcs.py).

Every write is whole or absent: an object store's PUT is atomic, and on a
folder jaxcache writes a temporary file beside the target and renames it
(atomic on POSIX filesystems, NFS included). Nothing here takes a lock: the
protocol above it (`jaxcache.fleet.catalog`) never needs one.

Calls are made from many threads at once; s3fs and gcsfs run them on their own
event loop, so that many requests are in flight together.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from jaxcache import atomic
from jaxcache.errors import UsageError
from jaxcache.fleet.errors import BadRemote, MissingExtra, RemoteError
from jaxcache.settings import refuse_one_slash_url

T = TypeVar("T")
_TEMP_PREFIX = atomic.TEMP_PREFIX
_EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


class Store(Protocol):
    """A flat namespace of objects under one root, addressed by ``/``-separated relative names."""

    url: str

    def read(self, name: str) -> bytes:
        """The whole object. Raises FileNotFoundError if it is not there, RemoteError otherwise."""

    def write(self, name: str, data: bytes) -> None:
        """Creates or replaces an object, whole or not at all."""

    def upload(self, name: str, source: Path) -> None:
        """Creates or replaces an object from a local file, whole or not at all."""

    def download(self, name: str, target: Path) -> None:
        """Copies an object into a local file (which the caller then checks and renames)."""

    def list(self, prefix: str) -> dict[str, int]:
        """Names (relative to the root) and sizes of every object under ``prefix``; empty if none."""

    def delete(self, name: str) -> None:
        """Removes an object; one already gone is not an error."""

    def require(self) -> None:
        """Raises RemoteError when the remote cannot exist as addressed (an object store's bucket is missing)."""


def open_store(remote: str, *, concurrency: int = 16) -> Store:
    """The store a ``REMOTE`` argument names.

    Raises:
        BadRemote: an empty remote or an unsupported scheme.
        MissingExtra: s3:// or gs:// without s3fs or gcsfs installed.
    """
    if not isinstance(remote, str) or not remote.strip():
        raise BadRemote("the remote is empty; give a path, s3://bucket/prefix or gs://bucket/prefix")
    remote = remote.strip()
    try:
        refuse_one_slash_url(remote)  # else `s3:/b/x` is a folder named `s3:` here, and every node pulls nothing
    except UsageError as e:
        raise BadRemote(str(e)) from None
    scheme, sep, rest = remote.partition("://")
    if not sep:
        return LocalStore(Path(os.path.expanduser(remote)).absolute())
    scheme = scheme.lower()
    if scheme == "file":
        return LocalStore(Path(rest if rest.startswith("/") else "/" + rest))
    if scheme not in _EXTRAS:
        raise BadRemote(f"unsupported remote {remote!r}: use a path, s3://bucket/prefix or gs://bucket/prefix")
    bucket_path = rest.strip("/")
    if not bucket_path:
        raise BadRemote(f"{remote!r} names no bucket")
    return FsspecStore(scheme, bucket_path, concurrency=concurrency)


def _remote_error(store: str, name: str, err: BaseException) -> RemoteError:
    """One line for any failure of a store call (network, credentials, permissions)."""
    kind = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else kind
    if kind == "NoCredentialsError":
        text = "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    elif isinstance(err, PermissionError):
        text = f"permission denied ({text})"
    return RemoteError(f"{store}/{name}: {text}" if name else f"{store}: {text}")


class LocalStore:
    """A folder, say on NFS or Lustre, that every node mounts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise _remote_error(self.url, name, e) from None

    def write(self, name: str, data: bytes) -> None:
        self._atomically(name, lambda f: f.write(data))

    def upload(self, name: str, source: Path) -> None:
        def copy(f: Any) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)

        self._atomically(name, copy)

    def _atomically(self, name: str, fill: Callable[[Any], object]) -> None:
        target = self._path(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A plain write's mode (other nodes' users read it, as JAX's own entries) and a
            # name that proves it orphaned once its writer is gone.
            fd, tmp = atomic.create_temp(target.parent)
        except OSError as e:
            raise _remote_error(self.url, name, e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
            os.replace(tmp, target)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise _remote_error(self.url, name, e) from None
            raise

    def download(self, name: str, target: Path) -> None:
        try:
            shutil.copyfile(self._path(name), target)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise _remote_error(self.url, name, e) from None

    def list(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix)
        found: dict[str, int] = {}
        try:
            for folder, _, files in os.walk(base):
                rel = os.path.relpath(folder, self.root)
                for file in files:
                    if file.startswith(_TEMP_PREFIX):
                        continue  # a write in progress (or a dead writer's): not an object
                    try:
                        size = os.stat(os.path.join(folder, file)).st_size
                    except FileNotFoundError:
                        continue
                    found[file if rel == "." else f"{rel}/{file}"] = size
        except OSError as e:
            raise _remote_error(self.url, prefix, e) from None
        return found

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as e:
            raise _remote_error(self.url, name, e) from None

    def require(self) -> None:
        """A folder is created by the first push; a missing one just holds nothing."""


class FsspecStore:
    """An object store through fsspec: s3fs for ``s3://``, gcsfs for ``gs://``."""

    def __init__(self, scheme: str, bucket_path: str, *, concurrency: int) -> None:
        module, extra = _EXTRAS[scheme]
        try:
            __import__(module)
        except ImportError:
            raise MissingExtra(f"{scheme}:// needs {module}: pip install 'jaxcache[{extra}]'") from None
        import fsspec

        self.url = f"{scheme}://{bucket_path}"
        self.root = bucket_path
        options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
        if module == "s3fs":
            # botocore's pool holds 10 connections by default: more transfers in flight need more.
            options["config_kwargs"] = {"max_pool_connections": max(10, concurrency)}
        try:
            self.fs = fsspec.filesystem("gcs" if scheme == "gs" else scheme, **options)
        except Exception as e:  # noqa: BLE001 (any backend's configuration error, as one line)
            raise _remote_error(self.url, "", e) from None

    def _call(self, name: str, fn: Callable[[], T], *, missing_ok: bool = True) -> T:
        try:
            return fn()
        except FileNotFoundError as e:
            if missing_ok:
                raise
            raise RemoteError(f"{self.url}/{name}: not found (does the bucket exist?)") from e
        except Exception as e:  # noqa: BLE001 (botocore, aiohttp, google-auth: each its own classes)
            raise _remote_error(self.url, name, e) from None

    def _full(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def read(self, name: str) -> bytes:
        return self._call(name, lambda: self.fs.cat_file(self._full(name)))

    def write(self, name: str, data: bytes) -> None:
        self._call(name, lambda: self.fs.pipe_file(self._full(name), data), missing_ok=False)

    def upload(self, name: str, source: Path) -> None:
        self._call(name, lambda: self.fs.put_file(str(source), self._full(name)), missing_ok=False)

    def download(self, name: str, target: Path) -> None:
        self._call(name, lambda: self.fs.get_file(self._full(name), str(target)))

    def list(self, prefix: str) -> dict[str, int]:
        base = self._full(prefix).rstrip("/")
        try:
            found = self._call(prefix, lambda: self.fs.find(base, detail=True))
        except FileNotFoundError:
            return {}
        start = len(self.root) + 1
        return {path[start:]: int(info.get("size") or 0) for path, info in found.items()
                if info.get("type", "file") == "file" and path.startswith(self.root + "/")}

    def delete(self, name: str) -> None:
        try:
            self._call(name, lambda: self.fs.rm_file(self._full(name)))
        except FileNotFoundError:
            pass

    def require(self) -> None:
        bucket = self.root.split("/", 1)[0]
        try:
            # Not exists(): it answers False for an endpoint it cannot reach, too.
            self._call("", lambda: self.fs.info(bucket))
        except FileNotFoundError:
            raise RemoteError(f"{self.url}: no bucket {bucket!r} (or no permission to see it)") from None


