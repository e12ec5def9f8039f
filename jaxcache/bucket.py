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
- An object store records no reads: an entry's last use is what the processes
  jaxcache configured recorded (:class:`UseRecorder`), or its ``-atime`` object when
  JAX keeps one (capped caches only); else it is unknown, and ``prune --older-than``
  refuses to guess.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jaxcache import jaxformat, provenance
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
BATCH_BYTES = 256 << 20  # whole objects held in memory at once by a check
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
        try:
            listing = self._call("", lambda: self.fs.find(self.store.root, detail=True), missing_ok=True)
        except FileNotFoundError:  # s3fs's answer for a missing bucket
            listing = {}
        if not listing:
            # Only now: asking for the bucket itself needs a permission a prefix-scoped key may lack.
            self.store.require()
        by_folder, use_logs, other = self._classify(listing)
        used = self._read_uses(use_logs)
        markers = {folder: self._marker(folder) for folder, names in by_folder.items()
                   if provenance.MARKER_NAME in names}
        entries: list[CacheEntry] = []
        orphans: list[ObjectPath] = []
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
                    if name in (provenance.MARKER_NAME, jaxformat.LOCKFILE_NAME):
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
                         folders=tuple(sorted(folders, key=lambda f: str(f.path))), 
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
            if not parts[-1]:
                continue  # a "folder" placeholder object (`prefix/`, made by consoles): nothing in itself
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
        self._scanned_uses = ([], used)
        if not names:
            return used
        results = self._call("", lambda: self.fs.cat_ranges(names, None, None, on_error="return"))
        read = []
        for name, data in zip(names, results):
            try:
                found = {(folder, key): float(at) for folder, keys in json.loads(data)["uses"].items()
                         for key, at in keys.items()}
            except (TypeError, ValueError, KeyError, AttributeError):
                continue  # unreadable now, or not one of ours: kept, never folded away
            read.append(name)
            for where, at in found.items():
                if at > used.get(where, 0.0):
                    used[where] = at
        self._scanned_uses = (read, used)
        return used

    def is_version_folder(self) -> bool:
        """Whether the root is itself a marked version folder (then JAX writes into it, never a nested one)."""
        return self._marker("") is not None

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
        try:
            listed = self._call("", lambda: self.fs.ls(self.store.root, detail=False), missing_ok=True)
        except FileNotFoundError:
            listed = []
        # The prefix itself and "folder" placeholders (`prefix/`) are no content.
        names = [n.rstrip("/").rsplit("/", 1)[-1] for n in listed if n.rstrip("/") != self.store.root.rstrip("/")]
        names = [n for n in names if n]
        if not names:
            self.store.require()  # an empty answer from a missing bucket is an error, not "nothing there"
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
        """The version marker of a version folder ("" for the root itself), or None."""
        try:
            name = f"{folder}/{provenance.MARKER_NAME}" if folder else provenance.MARKER_NAME
            data = json.loads(self.store.read(name))
            return provenance.VersionInfo(jaxlib=str(data["jaxlib"]), jax=data.get("jax"))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    # -- reading -------------------------------------------------------------------------------

    def _read_many(self, paths: list[ObjectPath], *, head: int | None = None,
                   sizes: dict[ObjectPath, int] | None = None, progress: Callable[[int], None] | None = None) -> Iterable[tuple[ObjectPath, bytes | Exception]]:
        """Reads objects (or their first ``head`` bytes) many at a time; a failure is yielded, not raised.

        Through ``cat_ranges``, which takes each name as it is: ``cat`` and ``rm`` expand
        glob characters, so ``jit_a[b]-...`` would read (or delete) ``jit_ab-...``. Whole
        reads go in batches of at most `BATCH_BYTES` (entries can be hundreds of MB).
        An object listed empty is not read (a ranged GET of nothing is an error).
        """
        sizes = sizes or {}
        done = 0
        for batch in _batches(paths, lambda p: head or sizes.get(p, 0)):
            wanted = [p for p in batch if sizes.get(p) != 0]
            keys = [self._key(p) for p in wanted]
            results = self._call("", lambda: self.fs.cat_ranges(keys, [0 if head else None] * len(keys),
                                                                 [head] * len(keys), on_error="return")) if keys else []
            got = dict(zip(wanted, results))
            yield from ((p, got.get(p, b"")) for p in batch)
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
                elif (now.last_used or 0.0) > (entry.last_used or 0.0):
                    skipped.append((entry, "used since the plan"))
                else:
                    still.append(entry)
            heads = dict(self._read_many([e.path for e in still], head=4, sizes={e.path: e.bytes for e in still}))
            proven = []
            for entry in still:
                head = heads.get(entry.path)
                if isinstance(head, Exception) or head is None:
                    skipped.append((entry, "already gone" if isinstance(head, FileNotFoundError) else "unreadable"))
                elif head and jaxformat.detect_compression(head) is None:  # empty: a write JAX failed
                    skipped.append((entry, "contents are not a JAX cache entry"))
                else:
                    proven.append(entry)
            # -cache first, then -atime, as JAX's own eviction does.
            failed = self._delete([e.path for e in proven])
            self._delete([e.atime_path for e in proven if e.has_atime and e.path not in failed])
            skipped.extend((e, f"cannot delete ({failed[e.path]})") for e in proven if e.path in failed)
            deleted.extend(e for e in proven if e.path not in failed)
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
            self._delete([ObjectPath(f"{self.url}{name[len(self.store.root):]}") for name in names])
        except Exception:  # noqa: BLE001 (the use records are metadata: the prune itself is done)
            pass

    def _delete(self, paths: list[ObjectPath]) -> dict[ObjectPath, str]:
        """Deletes objects, many at a time; returns why each one that failed did.

        One ``rm_file`` per object: ``rm`` of a list expands glob characters, and s3fs's
        bulk delete does not report an object it could not delete (a retention lock, a policy).
        """
        from concurrent.futures import ThreadPoolExecutor

        def delete(path: ObjectPath) -> str | None:
            try:
                self._call(path.name, lambda: self.fs.rm_file(self._key(path)), missing_ok=True)
            except FileNotFoundError:
                return None  # gone already: what was wanted
            except Exception as e:  # noqa: BLE001 (RemoteError, as one line)
                return str(e)
            return None

        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="jaxcache-delete") as pool:
            return {p: why for p, why in zip(paths, pool.map(delete, paths)) if why is not None}

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
        for path, data in self._read_many(list(by_path), sizes={p: e.bytes for p, e in by_path.items()},
                                          progress=progress):
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
        return CheckReport(root=info.root, entries_checked=len(info.entries), findings=tuple(findings))

    def plan_repair(self, report: CheckReport) -> RepairPlan:
        """As :func:`jaxcache.integrity.plan_repair`: a corrupt entry is deleted only when its leading bytes
        prove it JAX's (empty, or zlib/zstd), else moved aside to ``<name>.quarantined``."""
        corrupt = [f for f in report.findings if f.kind == "corrupt"]
        heads = dict(self._read_many([f.path for f in corrupt], head=4,
                                     sizes={f.path: 0 for f in corrupt if f.message == "empty file"}))
        repairs = []
        for finding in report.findings:
            if finding.kind not in ("corrupt", "missing-atime", "orphan-atime"):
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
    """Records the hits and writes of a process whose JAX uses a bucket, in small objects.

    An object store records no reads, and JAX writes ``-atime`` objects only in a
    capped cache (never set on a bucket), so without this ``prune --older-than``
    would know nothing of use. One small PUT at the process's exit, and one every
    `FLUSH_EVERY_SECS` while it keeps using the cache (a job of days is seen using it;
    a process killed by SIGKILL or an unhandled SIGTERM loses only what it recorded since)::

        <root>/.jaxcache/uses/<time>-<host>-<pid>-<random>.json   {"uses": {"jaxlib-X": {key: time}}}
    """

    FLUSH_EVERY_SECS = 300.0

    def __init__(self, bucket: BucketCache, uses: dict[str, dict[str, float]] | None = None) -> None:
        self.bucket = bucket
        self.uses: dict[str, dict[str, float]] = uses or {}
        self._lock = threading.Lock()  # JAX compiles from several threads at once
        self._flushed_at = time.monotonic()

    def __call__(self, kind: str, module: str, value: Any) -> None:
        from jaxcache import compilelog

        if kind not in (compilelog.HIT, compilelog.WRITE):
            return
        folder = (compilelog.jax_cache_folder() or "").rstrip("/")
        if folder != self.bucket.url and not folder.startswith(self.bucket.url + "/"):
            return
        relative = folder[len(self.bucket.url):].strip("/")
        with self._lock:
            self.uses.setdefault(relative, {})[str(value)] = time.time()
            due = time.monotonic() - self._flushed_at > self.FLUSH_EVERY_SECS
            if due:
                self._flushed_at = time.monotonic()
        if due:  # off JAX's thread: a PUT must not hold up a compile or a hit
            threading.Thread(target=self.flush, name="jaxcache-uses", daemon=True).start()

    def flush(self, *, raise_errors: bool = False) -> None:
        """Writes what was recorded since the last flush; a store that cannot be reached keeps it for the next."""
        import os
        import socket

        with self._lock:
            uses, self.uses = self.uses, {}
        if not any(uses.values()):
            return
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        try:
            self.bucket.store.write(f"{META_DIR_NAME}/{USES_PREFIX}/{stamp}.json", json.dumps({"uses": uses}).encode())
        except Exception:  # noqa: BLE001 (at exit: never turn a finished job into a failure)
            with self._lock:
                for folder, keys in uses.items():
                    for key, at in keys.items():
                        mine = self.uses.setdefault(folder, {})
                        mine[key] = max(at, mine.get(key, 0.0))
            if raise_errors:
                raise


def _batches(items: list[ObjectPath], size_of: Callable[[ObjectPath], int]) -> Iterable[list[ObjectPath]]:
    """``items`` in runs of at most `BATCH` objects and `BATCH_BYTES` bytes (at least one object each)."""
    batch: list[ObjectPath] = []
    held = 0
    for item in items:
        if batch and (len(batch) == BATCH or held + size_of(item) > BATCH_BYTES):
            yield batch
            batch, held = [], 0
        batch.append(item)
        held += size_of(item)
    if batch:
        yield batch


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
