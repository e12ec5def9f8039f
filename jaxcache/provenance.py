"""Which jax/jaxlib version and platform wrote an entry.

JAX stores no version in an entry, and every key hashes the jaxlib version, so
entries of another jaxlib can never be hit again. jaxcache therefore points JAX
at a subfolder per jaxlib version of the cache root::

    <root>/jaxlib-0.10.2/.jaxcache-version.json   who made the folder (the proof of provenance)
    <root>/jaxlib-0.10.2/.jaxcache-writes.tsv     one line per entry written: key, platform, time, compile seconds
    <root>/jaxlib-0.10.2/<module>-<hash>-cache    JAX's own entries

The version is known for every entry in a marked subfolder, even one written
by a process configured only through the environment (``jaxcache run``,
``jaxcache hook``). The platform is known for entries written while
:func:`jaxcache.configure` was in the loop. Entries anywhere else (a flat
folder set up by hand) have unknown provenance and are never pruned as stale.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__.startswith("_jaxcache_bootstrap_"):  # loaded by path, with its siblings, by `jaxcache run`'s bootstrap
    atomic = sys.modules["_jaxcache_bootstrap_atomic"]
    jaxformat = sys.modules["_jaxcache_bootstrap_jaxformat"]
    jaxinternals = sys.modules["_jaxcache_bootstrap_jaxinternals"]
    uses = sys.modules["_jaxcache_bootstrap_uses"]
else:  # jaxinternals and uses are imported where used: `jaxcache hook` reads version folders and must start fast
    from jaxcache import atomic, jaxformat

VERSION_DIR_PREFIX = "jaxlib-"
MARKER_NAME = ".jaxcache-version.json"
WRITES_LOG_NAME = ".jaxcache-writes.tsv"


@dataclass(frozen=True)
class VersionInfo:
    """What a version folder's marker says about its writer."""

    jaxlib: str
    jax: str | None


def installed_versions() -> VersionInfo | None:
    """The installed jax/jaxlib versions, read without importing jax (it is slow)."""
    found = _dist_info_versions(("jax", "jaxlib"))
    if "jaxlib" not in found:
        from importlib import metadata  # slower, but knows every kind of install

        for name in ("jax", "jaxlib"):
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
    if "jaxlib" not in found:
        return None
    return VersionInfo(jaxlib=found["jaxlib"], jax=found.get("jax"))


def _dist_info_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Versions from ``<name>-<version>.dist-info`` folder names on sys.path, first match
    winning as in importlib.metadata; a fast path that skips importing importlib.metadata."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in listing:
            if item.endswith(".dist-info"):
                name, _, version = item[: -len(".dist-info")].partition("-")
                if name in names and name not in found and version:
                    found[name] = version
        if len(found) == len(names):
            break
    return found


def version_dir(root: Path, jaxlib: str) -> Path:
    return root / f"{VERSION_DIR_PREFIX}{jaxlib}"


def read_marker(folder: Path) -> VersionInfo | None:
    """The provenance marker of a version folder, or None if it has none we trust."""
    marker = folder / MARKER_NAME
    try:
        if marker.is_symlink():
            return None
        data = json.loads(marker.read_text(encoding="utf-8"))
        return VersionInfo(jaxlib=str(data["jaxlib"]), jax=data.get("jax"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_version_dir(root: Path, versions: VersionInfo) -> Path:
    """Creates (idempotently) the marked folder JAX writes into for these versions."""
    folder = version_dir(root, versions.jaxlib)
    folder.mkdir(parents=True, exist_ok=True)
    if read_marker(folder) != versions:
        payload = {
            "jaxlib": versions.jaxlib,
            "jax": versions.jax,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "writer": "jaxcache",
        }
        atomic.write_atomically(folder / MARKER_NAME, (json.dumps(payload, indent=1) + "\n").encode(), mode=0o644)
    return folder


def jax_dir(root: Path, layout: str, versions: VersionInfo | None) -> Path:
    """The folder JAX itself is pointed at for a cache root and layout."""
    if layout == "flat" or versions is None or read_marker(root) is not None:
        # A root that is itself a version folder (say, JAX_COMPILATION_CACHE_DIR
        # exported by `jaxcache run`) is used as it is, never nested.
        return root
    return version_dir(root, versions.jaxlib)


def record_write(folder: Path, key: str, platform: str | None, compile_seconds: float | None = None) -> None:
    """Appends one provenance line; a single small O_APPEND write is atomic on local disks."""
    seconds = "" if compile_seconds is None else f"{compile_seconds:.3f}"
    line = f"{key}\t{platform or ''}\t{time.time():.3f}\t{seconds}\n"
    # 0o666 less the umask, as JAX's entries: in a team cache every member appends here.
    fd = os.open(folder / WRITES_LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


@dataclass(frozen=True)
class WriteRecord:
    """What the write log says about one entry."""

    platform: str | None
    compile_seconds: float | None


def load_writes(folder: Path) -> dict[str, WriteRecord]:
    """Key -> what was recorded when the entry was written (torn or foreign lines skipped)."""
    records: dict[str, WriteRecord] = {}
    try:
        with open(folder / WRITES_LOG_NAME, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return records
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        try:
            seconds = float(fields[3]) if len(fields) > 3 and fields[3] else None
        except ValueError:
            seconds = None
        records[fields[0]] = WriteRecord(platform=fields[1] or None, compile_seconds=seconds)
    return records


IN_FLIGHT_SECS = 600.0
"""How long a write-log line may wait for its entry (JAX's lock timeout is 10 s; compiles log first)."""


def _recent(line: bytes, now: float) -> bool:
    try:
        return now - float(line.split(b"\t")[2]) < IN_FLIGHT_SECS
    except (IndexError, ValueError):
        return False


def compact_writes(folder: Path) -> int:
    """Rewrites ``folder``'s write log with one line per entry still there (its last);
    returns how many lines were dropped. Call it under the folder's lock, after deleting.

    A line is logged just before JAX writes its entry, and a capped writer then
    waits for the lock the caller holds: so a line younger than
    `IN_FLIGHT_SECS` stays even without its entry. Lines that writers append
    while this runs are carried over from the old file; only one appended in
    the instant between that last read and the rename could be lost, and it is
    metadata (a platform and a compile time), never an entry.
    """
    path = folder / WRITES_LOG_NAME
    try:
        with open(path, "rb") as f:
            data = f.read()
            mode = os.fstat(f.fileno()).st_mode & 0o7777
    except OSError:
        return 0
    complete = data[: data.rfind(b"\n") + 1]  # a torn last line is carried over below
    lines = complete.splitlines()
    latest: dict[bytes, bytes] = {}
    for line in lines:
        key = line.split(b"\t", 1)[0]
        latest.pop(key, None)  # keep the order of the last writes
        latest[key] = line
    now = time.time()
    kept = [line for key, line in latest.items()
            if key and (os.path.lexists(folder / jaxformat.cache_file_name(key.decode("utf-8", "replace")))
                        or _recent(line, now))]
    if len(kept) == len(lines):
        return 0
    try:
        atomic.rewrite_log(path, b"".join(line + b"\n" for line in kept), read_bytes=len(complete), mode=mode)
    except OSError:
        return 0  # a log that stays long is only slower to read
    return len(lines) - len(kept)


def _recorder_modules() -> tuple[Any, Any]:
    if __name__.startswith("_jaxcache_bootstrap_"):
        return sys.modules["_jaxcache_bootstrap_jaxinternals"], sys.modules["_jaxcache_bootstrap_uses"]
    from jaxcache import jaxinternals, uses

    return jaxinternals, uses


class WriteRecorder:
    """A :mod:`jaxcache.compilelog` listener recording each entry JAX writes, and each use.

    Hears "'<module>' took at least ... seconds to compile (<secs>)", which
    precedes the write, then "Writing <module> ... with key <key>", and appends
    the key, platform and measured compile time to the version folder's log.
    Every hit and write is also appended to the folder's use log
    (:mod:`jaxcache.uses`): JAX records no use in an uncapped cache.
    """

    def __init__(self) -> None:
        self.last_compile_seconds: dict[str, float] = {}

    def __call__(self, kind: str, module: str, value: str | float) -> None:
        if kind == "compile_time":
            self.last_compile_seconds[module] = float(value)
        elif kind in ("write", "hit"):
            import jax

            folder = Path(jax.config.jax_compilation_cache_dir or "")
            if not folder.name or not folder.is_dir():
                return
            jaxinternals, uses = _recorder_modules()
            if kind == "write" and read_marker(folder) is not None:
                record_write(folder, str(value), jaxinternals.writing_platform(),
                             self.last_compile_seconds.pop(module, None))
            uses.record_uses(folder, [str(value)])
