"""When each entry was last used: recorded where jaxcache sees the hit.

JAX keeps no record of use in an uncapped cache (``-atime`` files exist only
with a size cap), and the file system's access time is a poor witness: under
Linux's default ``relatime`` it moves at most once a day, under ``noatime``
never. So wherever jaxcache is in the loop it appends one line per hit to its
folder's use log, and scans take an entry's last use from there::

    <folder>/.jaxcache/uses      "<key>\\t<seconds since the epoch>\\n" per recorded hit

Recorded by every process jaxcache configures (``configure()``, so the pytest
plugin and ``warm``; ``jaxcache run``'s children through its bootstrap): each
hit and each write, at the moment JAX logs it. Standard library only: the
bootstrap loads this file by path.

Lines are appended with one ``O_APPEND`` write each (atomic for lines this
short on local file systems), so processes never interleave. The log is read
whole by scans that want last uses; once it passes `COMPACT_BYTES` the next
reader that can write rewrites it with one line per key.

Entries with no recorded use fall back to the file system's access time, and
:func:`atime_resolution` says how far that can be trusted here.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

if __name__.startswith("_jaxcache_bootstrap_"):  # loaded by path, with its siblings, by `jaxcache run`'s bootstrap
    atomic = sys.modules["_jaxcache_bootstrap_atomic"]
    META_DIR_NAME = ".jaxcache"  # jaxcache.index.META_DIR_NAME (tests/test_uses.py checks they agree)
else:
    from jaxcache import atomic
    from jaxcache.index import META_DIR_NAME

USES_NAME = "uses"
COMPACT_BYTES = 1 << 20  # about 12k lines: rewrite with one line per key beyond this

# What the file system's access time can tell about the last use, by mount option.
RELATIME_SECS = 24 * 3600.0  # relatime moves the access time at most once a day


def uses_path(folder: Path) -> Path:
    return folder / META_DIR_NAME / USES_NAME


def record_uses(folder: Path, keys: Iterable[str], when: float | None = None) -> int:
    """Appends a use of each key (hits seen in ``folder``); returns how many were recorded.

    Best effort: a folder jaxcache cannot write to records nothing (a use record
    is metadata, never worth failing a run for).
    """
    when = time.time() if when is None else when
    lines = "".join(f"{key}\t{when:.3f}\n" for key in dict.fromkeys(keys) if key and "\t" not in key and "\n" not in key)
    if not lines:
        return 0
    path = uses_path(folder)
    try:
        path.parent.mkdir(exist_ok=True)
        # 0o666 less the umask, as JAX's own files: in a team cache every member appends here.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError:
        return 0
    try:
        data = lines.encode("utf-8")
        # One write per line keeps each append atomic next to other writers.
        for line in data.splitlines(keepends=True):
            os.write(fd, line)
    except OSError:
        return 0
    finally:
        os.close(fd)
    return lines.count("\n")


def load_uses(folder: Path) -> dict[str, float]:
    """Key -> the last recorded use (torn or foreign lines skipped); compacts a large log."""
    path = uses_path(folder)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    uses: dict[str, float] = {}
    for line in data.splitlines():
        key, _, when = line.partition(b"\t")
        try:
            seconds = float(when)
        except ValueError:
            continue
        name = key.decode("utf-8", "replace")
        if seconds > uses.get(name, 0.0):
            uses[name] = seconds
    if len(data) > COMPACT_BYTES and os.access(path.parent, os.W_OK):
        _rewrite(path, len(data), uses)
    return uses


def forget_uses(folder: Path, keys: Iterable[str]) -> None:
    """Drops the records of deleted entries (call under the folder's lock, after deleting)."""
    gone = set(keys)
    path = uses_path(folder)
    if not gone or not path.exists():
        return
    uses = {k: v for k, v in load_uses(folder).items() if k not in gone}
    try:
        size = path.stat().st_size
    except OSError:
        return
    _rewrite(path, size, uses)


def _rewrite(path: Path, read_bytes: int, uses: dict[str, float]) -> None:
    """Replaces the log with one line per key, carrying over lines appended since it was read."""
    head = "".join(f"{k}\t{v:.3f}\n" for k, v in uses.items()).encode("utf-8")
    try:
        atomic.rewrite_log(path, head, read_bytes=read_bytes, mode=os.stat(path).st_mode & 0o7777)
    except OSError:
        pass  # a log that stays long is only slower to read


def atime_resolution(path: Path) -> float:
    """How stale the file system's access time of a file under ``path`` may be, in seconds.

    0 with ``strictatime``; a day with ``relatime`` (the Linux default); infinite
    with ``noatime`` (it never moves). From the mount flags ``statvfs`` reports;
    where it cannot tell, a day (the default's answer).
    """
    try:
        flags = os.statvfs(path).f_flag
    except OSError:
        return RELATIME_SECS
    if flags & getattr(os, "ST_NOATIME", 0):
        return math.inf
    if flags & getattr(os, "ST_RELATIME", 0):
        return RELATIME_SECS
    return 0.0 if hasattr(os, "ST_RELATIME") else RELATIME_SECS
