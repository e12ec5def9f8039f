"""A JAX cache kept in an object store: ``--cache-dir s3://bucket/prefix`` (or ``gs://``).

JAX can write its cache straight into a bucket: ``jax/_src/path.py`` builds the
folder as an ``etils.epath.Path``, which reaches ``s3://`` and ``gs://`` through
fsspec (s3fs, gcsfs). Every hit is then a GET and every write a PUT. This module
gives such a cache the same ``inspect``, ``ls``, ``prune``, ``clear`` and
``check`` as a local folder, by building the same :class:`CacheInfo` from one
listing, so that planning (:func:`jaxcache.prune.plan_prune`) and reporting stay
one code path; only reading and deleting objects differ.

What is safe next to running JAX (docs/fleet.md, "A bucket as the cache"):

- JAX takes no lock that other machines see. A size cap's ``.lockfile`` is a
  ``filelock.SoftFileLock`` on the URL string, that is, a local file under a
  folder named ``s3:`` in the working folder, and every capped write lists the
  whole bucket. jaxcache therefore never sets a cap on a bucket; prune it from
  one place instead.
- Deleting is safe: a PUT is atomic, so no entry is ever half there, and a process
  that finds its entry gone between JAX's ``exists()`` and its read gets a warning
  and compiles (``compiler.py`` turns any read error into a miss). A deletion costs
  at most one compile somewhere.
- An object store records no reads: an entry's last use is its ``-atime`` object
  when JAX keeps one (capped caches only), else unknown, and ``prune
  --older-than`` refuses to guess.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jaxcache import jaxformat, provenance
from jaxcache.atomic import TEMP_PREFIX
from jaxcache.errors import NotACacheError
from jaxcache.index import META_DIR_NAME
from jaxcache.fleet.remote import FsspecStore, open_store
from jaxcache.integrity import (
    IN_PROGRESS_SECS,
    CheckReport,
    Finding,
    Kind,
    Repair,
    RepairAction,
    RepairOutcome,
    RepairPlan,
    RepairResult,
)
from jaxcache.prune import PrunePlan, PruneResult
from jaxcache.scanning import CacheEntry, CacheInfo, FolderInfo
from jaxcache.summary import EntryDetails

# Objects read or deleted per request batch: many in flight, and progress between batches.
BATCH = 256
# Enough of an entry to decompress its compile-time header (jaxformat reads as much locally).
_HEADER_BYTES = 4096
_FLEET_FOLDERS = ("objects", "manifests")  # a `jaxcache push` remote, not a JAX cache
USES_PREFIX = "uses"  # <root>/.jaxcache/uses/<one object per process>.json


@dataclass(frozen=True, order=True)
class ObjectPath:
    """An object (or a "folder" prefix) in a store, as a URL: what a Path is to a local cache."""

    url: str

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self.url.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.url.rstrip("/").rsplit("/", 1)[0])

    def __str__(self) -> str:
        return self.url


class BucketCache:
    """One cache root in an object store, reached through fsspec.

    ``atime_resolution``: an object store keeps no access times, so a use nobody
    recorded is never guessed (:func:`jaxcache.prune.plan_prune` refuses instead).

    Raises (on construction):
        MissingExtra: s3fs or gcsfs is not installed.
        BadRemote: the URL is not an object store's.
    """

    atime_resolution = math.inf

    def __init__(self, url: str) -> None:
        store = open_store(url)
        if not isinstance(store, FsspecStore):
            raise NotACacheError(f"{url} is not an object store")
        self.store = store
        self.fs = store.fs
        self.url = store.url
        self.root = ObjectPath(store.url)
        # The use objects the last scan read, and what they say: (folder, key) -> last use.
        self._scanned_uses: tuple[list[str], dict[tuple[str, str], float]] = ([], {})

    # -- paths ---------------------------------------------------------------------------------

    def _key(self, path: ObjectPath) -> str:
        """The fsspec path (no scheme) of an object under this root."""
        return self.store.root + path.url[len(self.url):]

    def _call(self, what: str, fn: Callable[[], Any], *, missing_ok: bool = False) -> Any:
        return self.store._call(what, fn, missing_ok=missing_ok)

    # -- scanning ------------------------------------------------------------------------------

    def scan(self) -> CacheInfo:
        """Every entry under the root and its version folders, from one listing.

        Raises:
            RemoteError: the store cannot be listed, or the bucket is missing.
            NotACacheError: the prefix holds objects, but none that JAX or jaxcache writes.
        """
        self.store.require()
        listing = self._call("", lambda: self.fs.find(self.store.root, detail=True))
        by_folder, use_logs, other = self._classify(listing)
        used = self._read_uses(use_logs)
        self._scanned_uses = (use_logs, used)
        markers = {folder: self._marker(folder) for folder, names in by_folder.items()
                   if folder and provenance.MARKER_NAME in names}
        entries: list[CacheEntry] = []
        orphans: list[ObjectPath] = []
        temps: list[ObjectPath] = []
        folders: list[FolderInfo] = []
        evidence = False
        for folder, names in by_folder.items():
            marker = markers.get(folder)
            if folder and marker is None:
                other += len(names)  # a jaxlib-* prefix jaxcache did not mark: not looked into
                continue
            path = self.root / folder if folder else self.root
            version = marker.jaxlib if marker else None
            keys = {name[:-6] for name in names if name.endswith("-cache")}
            for name, meta in names.items():
                parsed = jaxformat.parse_entry_name(name)
                if parsed is None:
                    if name.startswith(TEMP_PREFIX):
                        temps.append(path / name)
                    elif name in (provenance.MARKER_NAME, jaxformat.LOCKFILE_NAME):
                        evidence = True
                    else:
                        other += 1
                    continue
                evidence = True
                if name.endswith("-atime"):
                    if parsed.key not in keys:
                        orphans.append(path / name)
                    continue
                atime = names.get(jaxformat.atime_file_name(parsed.key))
                size = int(meta.get("size") or 0)
                last = max(filter(None, (_modified(atime), used.get((folder, parsed.key)))), default=None)
                entries.append(CacheEntry(path, parsed.key, parsed.module, size, size, _modified(meta) or 0.0,
                                          last, atime is not None, None, version, None, None))
            folders.append(FolderInfo(path=path, version=version, jax_version=marker.jax if marker else None,
                                      has_lockfile=False))
        if not evidence and other:
            raise NotACacheError(f"{self.url} does not look like a JAX compilation cache (no cache entries among "
                                 f"{other} other objects); nothing was changed")
        if not any(f.path == self.root for f in folders):
            folders.append(FolderInfo(path=self.root, version=None, jax_version=None, has_lockfile=False))
        entries.sort(key=lambda e: e.key)
        return CacheInfo(root=self.root, entries=tuple(entries), orphan_atimes=tuple(sorted(orphans)),
                         folders=tuple(sorted(folders, key=lambda f: str(f.path))), temp_files=tuple(sorted(temps)),
                         other_files=other)

    def _classify(self, listing: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, dict[str, Any]]], list[str],
                                                                      int]:
        """Sorts a listing into the root's and each ``jaxlib-*`` folder's objects (name -> listing),
        the use objects, and a count of other objects.

        Raises:
            NotACacheError: the prefix holds a fleet remote (what `jaxcache push` writes).
        """
        start = len(self.store.root) + 1
        by_folder: dict[str, dict[str, dict[str, Any]]] = {}  # "" (the root) or "jaxlib-X" -> name -> listing
        use_logs: list[str] = []
        other = 0
        for full, meta in listing.items():
            if meta.get("type", "file") != "file" or not full.startswith(self.store.root + "/"):
                continue
            parts = full[start:].split("/")
            if len(parts) == 1 or (len(parts) == 2 and parts[0].startswith(provenance.VERSION_DIR_PREFIX)):
                by_folder.setdefault(parts[0] if len(parts) == 2 else "", {})[parts[-1]] = meta
            elif parts[0] == META_DIR_NAME:
                if len(parts) == 3 and parts[1] == USES_PREFIX and parts[2].endswith(".json"):
                    use_logs.append(full)
            elif len(parts) >= 3 and parts[1] in _FLEET_FOLDERS:
                raise NotACacheError(f"{self.url} is a fleet remote (jaxcache push), not a JAX cache: "
                                     f"see what it holds with `jaxcache pull {self.url} --dry-run`")
            elif not set(parts[:2]) & set(jaxformat.XLA_SUBCACHE_NAMES):  # XLA's own sub-caches are JAX's
                other += 1
        return by_folder, use_logs, other

    def _read_uses(self, names: list[str]) -> dict[tuple[str, str], float]:
        """(folder, key) -> last recorded use, from every process's use object (see :class:`UseRecorder`)."""
        used: dict[tuple[str, str], float] = {}
        if not names:
            return used
        got = self._call("", lambda: self.fs.cat(names, on_error="return"))
        for data in got.values():
            try:
                record = json.loads(data)
                for folder, keys in record["uses"].items():
                    for key, at in keys.items():
                        if float(at) > used.get((folder, key), 0.0):
                            used[(folder, key)] = float(at)
            except (TypeError, ValueError, KeyError, AttributeError):
                continue  # not one of ours, or unreadable: it records nothing
        return used

    def ensure_version_folder(self, versions: provenance.VersionInfo) -> str:
        """Marks (once) the version folder JAX writes into for these versions; returns its URL."""
        folder = f"{provenance.VERSION_DIR_PREFIX}{versions.jaxlib}"
        if self._marker(folder) != versions:
            payload = {"jaxlib": versions.jaxlib, "jax": versions.jax, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "writer": "jaxcache"}
            self.store.write(f"{folder}/{provenance.MARKER_NAME}", (json.dumps(payload, indent=1) + "\n").encode())
        return f"{self.url}/{folder}"

    def require_cache_or_new(self) -> None:
        """Refuses a prefix that holds objects but nothing JAX or jaxcache writes (as for a local folder).

        Raises:
            RemoteError: the bucket is missing or cannot be listed.
            NotACacheError: the prefix holds only other objects.
        """
        self.store.require()
        try:
            names = [n.rstrip("/").rsplit("/", 1)[-1]
                     for n in self._call("", lambda: self.fs.ls(self.store.root, detail=False), missing_ok=True)]
        except FileNotFoundError:
            return
        if any(jaxformat.parse_entry_name(n) or n.startswith(provenance.VERSION_DIR_PREFIX) or n == META_DIR_NAME
               for n in names):
            return
        if names:
            raise NotACacheError(f"{self.url} is not empty and does not look like a JAX cache ({len(names)} other "
                                 "objects and prefixes); give a new or empty prefix")

    def require_not_fleet_remote(self, jax_dir: str) -> None:
        """Refuses to let JAX write into a fleet remote's version folder (what `jaxcache push` writes).

        Raises:
            NotACacheError: ``jax_dir`` holds a fleet remote's HEAD.
        """
        from jaxcache.fleet.catalog import HEAD_NAME

        head = self._key(ObjectPath(jax_dir) / HEAD_NAME)
        if self._call("", lambda: self.fs.exists(head)):
            raise NotACacheError(f"{self.url} is a fleet remote (jaxcache push), not a JAX cache: pull from it into "
                                 "a local cache, or give JAX another prefix")

    def _marker(self, folder: str) -> provenance.VersionInfo | None:
        try:
            data = json.loads(self.store.read(f"{folder}/{provenance.MARKER_NAME}"))
            return provenance.VersionInfo(jaxlib=str(data["jaxlib"]), jax=data.get("jax"))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    # -- reading -------------------------------------------------------------------------------

    def _read_many(self, paths: list[ObjectPath], *, head: int | None = None,
                   progress: Callable[[int], None] | None = None) -> Iterable[tuple[ObjectPath, bytes | Exception]]:
        """Reads objects (or their first ``head`` bytes) many at a time; a failure is yielded, not raised."""
        done = 0
        for start in range(0, len(paths), BATCH):
            batch = paths[start:start + BATCH]
            keys = [self._key(p) for p in batch]
            if head is None:
                got = self._call("", lambda: self.fs.cat(keys, on_error="return"))
                results = [got.get(k, FileNotFoundError(k)) for k in keys]
            else:
                results = self._call("", lambda: self.fs.cat_ranges(keys, [0] * len(keys), [head] * len(keys),
                                                                     on_error="return"))
            yield from zip(batch, results)
            done += len(batch)
            if progress is not None:
                progress(done)

    def describe(self, info: CacheInfo, *, name: str | None = None) -> list[EntryDetails]:
        """Every entry (matching ``name``) with the compile time from its header: one ranged read each."""
        from jaxcache.prune import matches_name, validate_glob

        if name is not None:
            validate_glob(name)
        chosen = [e for e in info.entries if name is None or matches_name(e, name)]
        seconds = {}
        for path, data in self._read_many([e.path for e in chosen], head=_HEADER_BYTES):
            seconds[path] = None if isinstance(data, Exception) else _compile_seconds(data)
        return [EntryDetails(e, seconds.get(e.path), None) for e in chosen]

    # -- deleting ------------------------------------------------------------------------------

    def execute_prune(self, plan: PrunePlan, *, progress: Callable[[int], None] | None = None) -> PruneResult:
        """Deletes the planned entries, each proven again first.

        The proof, as for a local folder: the object is still there, with the size
        and time the scan saw, and its leading bytes are zlib or zstd as JAX writes
        them. Anything else is skipped and reported, never deleted.
        """
        current = {e.path: e for e in self.scan().entries}
        deleted: list[CacheEntry] = []
        skipped: list[tuple[CacheEntry, str]] = []
        planned = [d.entry for d in plan.deletions]
        done = 0
        for start in range(0, len(planned), BATCH):
            batch = planned[start:start + BATCH]
            still = []
            for entry in batch:
                now = current.get(entry.path)
                if now is None:
                    skipped.append((entry, "already gone"))
                elif (now.bytes, now.written) != (entry.bytes, entry.written):
                    skipped.append((entry, "changed since the scan"))
                else:
                    still.append(entry)
            heads = dict(self._read_many([e.path for e in still], head=4))
            proven = []
            for entry in still:
                head = heads.get(entry.path)
                if isinstance(head, Exception) or head is None:
                    skipped.append((entry, "already gone" if isinstance(head, FileNotFoundError) else "unreadable"))
                elif jaxformat.detect_compression(head) is None:
                    skipped.append((entry, "contents are not a JAX cache entry"))
                else:
                    proven.append(entry)
            # -cache first, then -atime, as JAX's own eviction does.
            self._delete([e.path for e in proven])
            self._delete([e.atime_path for e in proven if e.has_atime])
            deleted.extend(proven)
            done += len(batch)
            if progress is not None:
                progress(done)
        self._compact_uses({(e.folder.name if e.folder != self.root else "", e.key) for e in deleted})
        return PruneResult(deleted=tuple(deleted), skipped=tuple(skipped))

    def _compact_uses(self, forget: set[tuple[str, str]]) -> None:
        """Folds the use objects the last scan read into one (less what was deleted), then drops them.

        One object per process would grow without end; a prune is the moment to fold
        them. Lock-free: a process writing its use object meanwhile is not among those
        read, so its object stays; a failure leaves the old objects, which say the same.
        """
        names, used = self._scanned_uses
        if len(names) < 2 and not forget:
            return
        merged: dict[str, dict[str, float]] = {}
        for (folder, key), at in used.items():
            if (folder, key) not in forget:
                merged.setdefault(folder, {})[key] = at
        try:
            if merged:
                UseRecorder(self, uses=merged).flush(raise_errors=True)
            if names:
                self.fs.rm(names)
        except Exception:  # noqa: BLE001 (the use records are metadata: the prune itself is done)
            pass

    def _delete(self, paths: list[ObjectPath]) -> None:
        if paths:
            keys = [self._key(p) for p in paths]
            self._call(paths[0].name, lambda: self.fs.rm(keys))

    # -- checking ------------------------------------------------------------------------------

    def check(self, info: CacheInfo, *, capped: bool = False, installed_version: str | None = None,
              now: float | None = None, progress: Callable[[int], None] | None = None) -> CheckReport:
        """Reads every entry whole (many at a time) and reports what :func:`jaxcache.integrity.check` would.

        Not checked on a bucket: permissions (the store's policies decide them) and
        whether an entry was written for another folder path (a URL is the same
        for every node).
        """
        now = time.time() if now is None else now
        findings: list[Finding] = []
        needs_atime = {e.folder for e in info.entries if e.has_atime}
        if capped:
            needs_atime.update(f.path for f in info.folders)
        needs_atime = {f.path for f in info.folders if f.path in needs_atime
                       and jaxformat.missing_atime_breaks_writes(f.version or installed_version)}
        by_path = {e.path: e for e in info.entries}
        for path, data in self._read_many(list(by_path), progress=progress):
            entry = by_path[path]
            # A PUT is whole or absent, so a broken object is never a write in progress (unlike a
            # local file JAX writes in place); only its -atime, a second PUT, may be on its way.
            young = now - entry.written < IN_PROGRESS_SECS
            if isinstance(data, FileNotFoundError):
                continue  # deleted since the scan
            if isinstance(data, Exception):
                findings.append(Finding("corrupt", path, f"unreadable: {data}", key=entry.key))
                continue
            try:
                jaxformat.decompress_entry(data)
            except jaxformat.EntryFormatError as e:
                kind: Kind = "unverifiable" if "zstandard" in str(e) else "corrupt"
                findings.append(Finding(kind, path, str(e), key=entry.key))
                continue
            if entry.folder in needs_atime and not entry.has_atime and not young:
                findings.append(Finding("missing-atime", path, "no -atime object in a size-capped cache: JAX's "
                                        "next write will fail", key=entry.key))
        for path in info.orphan_atimes:
            findings.append(Finding("orphan-atime", path, "-atime object without its -cache entry", key=path.name[:-6]))
        for path in info.temp_files:
            findings.append(Finding("stale-temp", path, "temporary object of a jaxcache write"))
        return CheckReport(root=info.root, entries_checked=len(info.entries), findings=tuple(findings))

    def plan_repair(self, report: CheckReport) -> RepairPlan:
        """As :func:`jaxcache.integrity.plan_repair`: a corrupt entry is deleted only when its leading bytes
        prove it JAX's (empty, or zlib/zstd), else moved aside to ``<name>.quarantined``."""
        corrupt = [f for f in report.findings if f.kind == "corrupt"]
        heads = dict(self._read_many([f.path for f in corrupt], head=4))
        repairs = []
        for finding in report.findings:
            if finding.kind not in ("corrupt", "missing-atime", "orphan-atime", "stale-temp"):
                continue
            action: RepairAction = "delete"
            if finding.kind == "corrupt":
                head = heads.get(finding.path)
                if isinstance(head, Exception) or head is None:
                    continue  # gone or unreadable: nothing provable to do
                action = "delete" if not head or jaxformat.detect_compression(head) is not None else "quarantine"
            elif finding.kind == "missing-atime":
                action = "create-atime"
            repairs.append(Repair(finding, action))
        return RepairPlan(root=report.root, repairs=tuple(repairs))

    def execute_repair(self, plan: RepairPlan) -> RepairResult:
        """Carries out a plan, proving each object again right before it changes."""
        outcomes = []
        for item in plan.repairs:
            try:
                outcomes.append(self._repair_one(item))
            except Exception as e:  # noqa: BLE001 (a store's errors, as one line each)
                outcomes.append(RepairOutcome(item, "failed", str(e).splitlines()[0] if str(e) else type(e).__name__))
        return RepairResult(outcomes=tuple(outcomes))

    def _repair_one(self, item: Repair) -> RepairOutcome:
        finding, path = item.finding, item.finding.path
        assert isinstance(path, ObjectPath)
        name = path.name
        parsed = jaxformat.parse_entry_name(name)
        if finding.kind == "stale-temp":
            if not name.startswith(TEMP_PREFIX):
                raise OSError(f"{name} is not a jaxcache temporary object")
            self._delete([path])
            return RepairOutcome(item, "repaired")
        if parsed is None:
            raise OSError(f"{name} is not a cache entry")
        key = self._key(path)
        if finding.kind == "missing-atime":
            atime = path.parent / jaxformat.atime_file_name(parsed.key)
            if self.fs.exists(self._key(atime)):
                return RepairOutcome(item, "skipped", "has one since the check")
            self.fs.pipe_file(self._key(atime), jaxformat.encode_atime(time.time_ns()))
            return RepairOutcome(item, "repaired")
        if finding.kind == "orphan-atime":
            if self.fs.exists(self._key(path.parent / jaxformat.cache_file_name(parsed.key))):
                return RepairOutcome(item, "skipped", "its entry is back")
            data = self.fs.cat_file(key)
            if data and jaxformat.decode_atime(data) is None:
                raise OSError(f"{name} does not hold an access time")
            self._delete([path])
            return RepairOutcome(item, "repaired")
        # corrupt
        try:
            data = self.fs.cat_file(key)
        except FileNotFoundError:
            return RepairOutcome(item, "skipped", "gone since the check")
        try:
            jaxformat.decompress_entry(data)
            return RepairOutcome(item, "skipped", "replaced by a whole entry since the check")
        except jaxformat.EntryFormatError:
            pass
        note = None
        if item.action == "quarantine" or not (not data or jaxformat.detect_compression(data[:4]) is not None):
            aside = path.parent / f"{name}.quarantined"
            self.fs.pipe_file(self._key(aside), data)  # a copy of what was read, then the original goes
            note = f"moved aside to {aside.name} (its contents do not prove it a JAX entry)"
        self._delete([path])
        atime = path.parent / jaxformat.atime_file_name(parsed.key)
        if self.fs.exists(self._key(atime)):
            self._delete([atime])
        return RepairOutcome(item, "repaired", note)


class UseRecorder:
    """Records the hits and writes of a process whose JAX uses a bucket, as one object at exit.

    An object store records no reads, and JAX writes ``-atime`` objects only in a
    capped cache (never set on a bucket), so without this ``prune --older-than``
    would know nothing of use. One small PUT per process, at its end::

        <root>/.jaxcache/uses/<time>-<host>-<pid>-<random>.json   {"uses": {"jaxlib-X": {key: time}}}
    """

    def __init__(self, bucket: BucketCache, uses: dict[str, dict[str, float]] | None = None) -> None:
        self.bucket = bucket
        self.uses: dict[str, dict[str, float]] = uses or {}

    def __call__(self, kind: str, module: str, value: Any) -> None:
        from jaxcache import compilelog

        if kind not in (compilelog.HIT, compilelog.WRITE):
            return
        folder = compilelog.jax_cache_folder() or ""
        if not folder.startswith(self.bucket.url):
            return
        relative = folder[len(self.bucket.url):].strip("/")
        self.uses.setdefault(relative, {})[str(value)] = time.time()

    def flush(self, *, raise_errors: bool = False) -> None:
        """Writes what was recorded (at exit); a store that cannot be reached loses only these uses."""
        import os
        import socket

        if not any(self.uses.values()):
            return
        name = f"{META_DIR_NAME}/{USES_PREFIX}/{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}.json"
        try:
            self.bucket.store.write(name, json.dumps({"uses": self.uses}).encode())
            self.uses = {}
        except Exception:  # noqa: BLE001 (at exit: never turn a finished job into a failure)
            if raise_errors:
                raise


def _modified(meta: dict[str, Any] | None) -> float | None:
    """An object's last-modified time from any fsspec backend's listing (s3fs, gcsfs, local)."""
    if not meta:
        return None
    for field in ("LastModified", "updated", "mtime", "last_modified", "time"):
        value = meta.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _compile_seconds(head: bytes) -> int | None:
    """The whole-second compile time in an entry's first bytes, or None if they cannot tell."""
    import io

    try:
        return jaxformat.read_compile_seconds_from(io.BytesIO(head))
    except (OSError, jaxformat.EntryFormatError):
        return None
