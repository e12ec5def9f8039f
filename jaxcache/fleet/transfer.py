"""Moving objects, many in flight at once, each checked before it counts.

Into a local folder: each object is downloaded into a temporary file beside
its final place, its size and SHA-256 are checked against the manifest, and
only then does it take its name, under JAX's ``.lockfile``, by a hard link
that fails if the name exists (JAX never replaces an entry, and neither does
this). A process killed at any moment leaves at most temporary files, named
by their writer (`jaxcache.atomic`) so that the next transfer removes them once
that process is provably gone; never a partial entry.

Out to a remote: each object is read whole, checked against the SHA-256 its
record was made with (a stored executable can be replaced under the same
name), and written whole.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jaxcache import atomic, jaxformat, locking, provenance
from jaxcache.fleet import catalog
from jaxcache.fleet.errors import RemoteError
from jaxcache.fleet.manifest import ObjectRecord
from jaxcache.fleet.remote import Store

T = TypeVar("T")
Progress = Callable[[int, int, int], None]
"""Called as ``progress(objects_done, objects_total, bytes_done)`` after each object."""



@dataclass(frozen=True)
class Transferred:
    """What a transfer did.

    Attributes:
        done: names of the objects now in place (this run's, or found there meanwhile).
        failed: (name, why) for objects that were not: refused by their checksum, or not transferred.
        bytes: bytes moved.
        seconds: wall time.
    """

    done: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"done": len(self.done), "failed": [{"name": n, "reason": r} for n, r in self.failed],
                "bytes": self.bytes, "seconds": round(self.seconds, 3)}


class _Refused(Exception):
    """An object whose bytes do not match its record."""


class _Mismatch(_Refused):
    """Downloaded bytes that are not the record's: their size and SHA-256, for the message."""

    def __init__(self, record: ObjectRecord, size: int, digest: str) -> None:
        self.size, self.digest = size, digest
        super().__init__(f"{size} bytes with SHA-256 {digest[:12]}..., the manifest says {record.size} "
                         f"bytes with {record.sha256[:12]}... (tampered or damaged): refused")


def remove_dead_temps(folder: Path) -> int:
    """Removes the temporary files that dead writers left in a version folder and its store."""
    return sum(atomic.remove_orphaned_temps(sub) for sub in (folder, folder / "executables"))


def _sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _download_checked(store: Store, jaxlib: str, record: ObjectRecord, target_dir: Path) -> Path:
    """One remote object in a temporary file of ``target_dir``, its size and SHA-256 checked
    against the record; the caller owns the file. Raises FileNotFoundError, _Mismatch, RemoteError."""
    fd, tmp = atomic.create_temp(target_dir)  # named by its writer: provably orphaned if it dies
    os.close(fd)
    try:
        store.download(catalog.object_name(jaxlib, record.sha256), tmp)
        digest, size = _sha256_of(tmp)
        if size != record.size or digest != record.sha256:
            raise _Mismatch(record, size, digest)
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _bounded(work: Callable[[ObjectRecord], T], records: Iterable[ObjectRecord], *, jobs: int, prefix: str,
             handle: Callable[[ObjectRecord, Future[T]], None]) -> None:
    """Runs ``work`` on each record, ``jobs`` at a time, and hands each finished one to ``handle``
    in this thread. At most twice ``jobs`` are submitted at once: temporary files in flight, not
    the whole list. Whatever ``handle`` raises stops the rest (queued work is cancelled)."""
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix=prefix)
    pending: dict[Future[T], ObjectRecord] = {}
    queue = iter(records)

    def submit() -> None:
        record = next(queue, None)
        if record is not None:
            pending[pool.submit(work, record)] = record

    try:
        for _ in range(max(1, jobs) * 2):
            submit()
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                record = pending.pop(future)
                submit()
                handle(record, future)
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def fetch_into(store: Store, jaxlib: str, records: Iterable[ObjectRecord], folder: Path, *, jobs: int = 16,
               capped: bool = False, progress: Progress | None = None) -> Transferred:
    """Downloads objects into a version folder, each checked, each entering whole or not at all.

    Args:
        store: the remote.
        jaxlib: its version folder.
        records: the objects to fetch (names relative to ``folder``).
        folder: the local version folder.
        jobs: transfers in flight.
        capped: the cache has a size cap: give each entry its ``-atime`` (JAX's eviction needs one).
        progress: called after each object.

    Raises:
        CacheDirError: the folder cannot be locked (objects already entered stay).
    """
    records = list(records)
    start = time.monotonic()
    remove_dead_temps(folder)
    if any(r.kind == "executable" for r in records):
        (folder / "executables").mkdir(exist_ok=True)
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    moved = 0

    def download(record: ObjectRecord) -> Path:
        return _download_checked(store, jaxlib, record, (folder / record.name).parent)

    def handle(record: ObjectRecord, future: Future[Path]) -> None:
        nonlocal moved
        try:
            tmp = future.result()
        except (_Refused, RemoteError, OSError) as e:
            failed.append((record.name, _why_failed(e, missing="named by the manifest but missing from the remote",
                                                    local="cannot write locally")))
        else:
            try:
                enter(folder, record, tmp, capped=capped)
            finally:
                tmp.unlink(missing_ok=True)
            done.append(record.name)
            moved += record.size
        if progress is not None:
            progress(len(done) + len(failed), len(records), moved)

    _bounded(download, records, jobs=jobs, prefix="jaxcache-pull", handle=handle)
    return Transferred(done=tuple(done), failed=tuple(failed), bytes=moved, seconds=time.monotonic() - start)


@dataclass(frozen=True)
class Checked:
    """What reading remote objects back found (`check_remote`).

    Attributes:
        sound: names of the objects whose remote bytes are their record's.
        damaged: (name, problem, why) for the others: ``missing``, or ``content`` (other bytes).
        failed: (name, why) for objects that could not be read (network, permissions): not judged.
        bytes: bytes read.
        seconds: wall time.
    """

    sound: tuple[str, ...]
    damaged: tuple[tuple[str, str, str], ...]
    failed: tuple[tuple[str, str], ...]
    bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"sound": len(self.sound),
                "damaged": [{"name": n, "problem": p, "reason": r} for n, p, r in self.damaged],
                "failed": [{"name": n, "reason": r} for n, r in self.failed], "bytes": self.bytes,
                "seconds": round(self.seconds, 3)}


def check_remote(store: Store, jaxlib: str, records: Iterable[ObjectRecord], scratch: Path, *, jobs: int = 16,
                 progress: Progress | None = None) -> Checked:
    """Downloads remote objects and checks each against its record's size and SHA-256, as a pull
    would, keeping nothing: a listing shows an object there at the right size, only its bytes
    show it whole (an overwrite or a flipped bit keeps the size).

    Args:
        store: the remote.
        jaxlib: its version folder.
        records: the records to check (the remote's, as its manifests name them).
        scratch: a local folder for the temporary files (removed as each is checked).
        jobs: downloads in flight.
        progress: called after each object.
    """
    records = list(records)
    start = time.monotonic()
    atomic.remove_orphaned_temps(scratch)  # a check killed earlier
    sound: list[str] = []
    damaged: list[tuple[str, str, str]] = []
    failed: list[tuple[str, str]] = []
    read = 0

    def check(record: ObjectRecord) -> None:
        _download_checked(store, jaxlib, record, scratch).unlink()

    def handle(record: ObjectRecord, future: Future[None]) -> None:
        nonlocal read
        try:
            future.result()
        except FileNotFoundError:
            # The listing had it, the read did not: deleted since (a lifecycle rule at work).
            damaged.append((record.name, "missing", "missing from the remote"))
        except _Mismatch as e:
            read += e.size
            damaged.append((record.name, "content", f"{e.size} bytes with SHA-256 {e.digest[:12]}... on the remote, "
                                                     f"the manifest says {record.sha256[:12]}..."))
        except RemoteError as e:
            failed.append((record.name, str(e)))
        except OSError as e:
            failed.append((record.name, f"cannot write locally ({e.strerror})"))
        else:
            sound.append(record.name)
            read += record.size
        if progress is not None:
            progress(len(sound) + len(damaged) + len(failed), len(records), read)

    _bounded(check, records, jobs=jobs, prefix="jaxcache-verify", handle=handle)
    return Checked(sound=tuple(sound), damaged=tuple(damaged), failed=tuple(failed), bytes=read,
                   seconds=time.monotonic() - start)


def enter(folder: Path, record: ObjectRecord, tmp: Path, *, capped: bool) -> None:
    """Gives one checked temporary file its name (see `enter_all`)."""
    enter_all(folder, [(record, tmp)], capped=capped)


def enter_all(folder: Path, items: Iterable[tuple[ObjectRecord, Path]], *, capped: bool) -> None:
    """Gives checked temporary files their names, under the folder's lock (taken once), never
    replacing a file. The temporary files are left for the caller to remove."""
    with locking.folder_lock(folder):
        for record, tmp in items:
            _place(folder, record, tmp, capped=capped)


def _place(folder: Path, record: ObjectRecord, tmp: Path, *, capped: bool) -> None:
    target = folder / record.name
    try:
        os.link(tmp, target)
    except FileExistsError:
        return  # JAX (or another pull) wrote it meanwhile: keep theirs, as JAX's put does
    except OSError:
        # A filesystem without hard links: rename, after looking (the lock keeps jaxcache's
        # writers out; JAX's uncapped writers take no lock, and at worst write the same key).
        if target.exists():
            return
        os.replace(tmp, target)
    if record.kind == "entry":
        if capped:
            atime = folder / jaxformat.atime_file_name(record.key)
            atime.write_bytes(jaxformat.encode_atime(time.time_ns()))
        if provenance.read_marker(folder) is not None:
            try:
                provenance.record_write(folder, record.key, record.platform, record.compile_seconds)
            except OSError:
                pass  # the write log is metadata: an entry without a line is still an entry


def upload_from(store: Store, jaxlib: str, records: Iterable[ObjectRecord], folder: Path, *, jobs: int = 16,
                progress: Progress | None = None) -> Transferred:
    """Uploads objects of a local version folder, each checked against its record first."""
    records = list(records)
    start = time.monotonic()
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    moved = 0

    def upload(record: ObjectRecord) -> None:
        with jaxformat.open_entry(folder / record.name) as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise _Refused("changed since it was described (replaced by a newer write); push again")
        store.write(catalog.object_name(jaxlib, record.sha256), data)

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="jaxcache-push") as pool:
        futures = {pool.submit(upload, r): r for r in records}
        try:
            for future in as_completed(futures):
                record = futures[future]
                try:
                    future.result()
                except (_Refused, RemoteError, OSError) as e:
                    failed.append((record.name, _why_failed(e, missing="deleted locally since it was described",
                                                            local="cannot read")))
                else:
                    done.append(record.name)
                    moved += record.size
                if progress is not None:
                    progress(len(done) + len(failed), len(records), moved)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return Transferred(done=tuple(done), failed=tuple(failed), bytes=moved, seconds=time.monotonic() - start)


__all__ = ["Checked", "Progress", "Transferred", "check_remote", "enter", "enter_all", "fetch_into",
           "remove_dead_temps", "upload_from"]


def _why_failed(err: BaseException, *, missing: str, local: str) -> str:
    """One object's failure, as one line: ``missing`` for a file gone, ``local`` for a local I/O error."""
    if isinstance(err, FileNotFoundError):
        return missing
    if isinstance(err, OSError):
        return f"{local} ({err.strerror})"
    return str(err)  # refused (size or SHA-256) or the remote's own error, already one line
