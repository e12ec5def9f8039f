"""Atomic file writes, through temporary files whose writer can be proven gone.

Every file jaxcache writes into a cache folder (JAX's entries, through the
``put`` replacement in `jaxcache.jaxinternals`; stored executables; version
markers and logs) is first written to a temporary file in the same folder and
then renamed into place with ``os.replace``, which POSIX makes atomic: readers
see the whole file or none, and a crash leaves at most a temporary file.

A temporary file is created the way a plain ``open(path, "wb")`` would create
the file itself (mode ``0o666`` less the umask *in force at that moment*,
applied by the kernel; default ACLs and a setgid folder's group as for any
new file), so an atomic write never leaves a file more open, or more closed,
than JAX's own plain write would. The process umask is never read or changed.

Its name says who wrote it::

    .jaxcache-tmp-<pid>-<start>-<machine>-<random>

``start`` is the writer's start time (clock ticks since boot, from
``/proc/<pid>/stat``; 0 where unknown) and ``machine`` a hash of the host
name, boot id and pid namespace. `writer_is_gone` proves from the name alone
that the writer can no longer finish: same machine, and no process with that
pid and start time (or only a zombie). Anything else (another host, another
boot, an older name) is not proof, and the caller falls back to the file's age.

Standard library only: the ``jaxcache run`` bootstrap loads this file by path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMP_PREFIX", "WriterId", "create_temp", "parse_temp_name", "remove_orphaned_temps", "rewrite_log",
           "temp_file", "writer_id", "writer_is_gone", "write_atomically"]

TEMP_PREFIX = ".jaxcache-tmp-"
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class WriterId:
    """The process that writes a temporary file, as its name records it.

    Attributes:
        pid: its process id.
        start: its start time in clock ticks since boot (0: unknown).
        machine: a hash of host name, boot id and pid namespace (see `machine_token`).
    """

    pid: int
    start: int
    machine: str

    def tag(self) -> str:
        return f"{self.pid}-{self.start}-{self.machine}"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of a process from ``/proc/<pid>/stat``; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime) of proc(5)


@functools.cache
def machine_token() -> str:
    """Names where a pid means one process: host name, boot id and pid namespace, hashed.

    Two machines that share a folder (NFS) and happen to share a host name
    still differ in boot id; two containers on one host differ in pid namespace.
    """
    import hashlib
    import socket

    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: str(os.stat("/proc/self/ns/pid").st_ino)):
        try:
            parts.append(read())
        except OSError:
            parts.append("?")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


_ids: dict[int, WriterId] = {}


def writer_id() -> WriterId:
    """This process's `WriterId` (recomputed after a fork: the child is another writer)."""
    pid = os.getpid()
    found = _ids.get(pid)
    if found is None:
        try:
            stat = _proc_stat(pid)
        except (OSError, ValueError, IndexError):
            stat = None
        found = _ids[pid] = WriterId(pid, stat[1] if stat else 0, machine_token())
    return found


def parse_temp_name(name: str) -> WriterId | None:
    """The writer recorded in a temporary file's name; None for any other name (or an older format)."""
    if not name.startswith(TEMP_PREFIX):
        return None
    fields = name[len(TEMP_PREFIX):].split("-")
    if len(fields) != 4 or not fields[0].isdigit() or not fields[1].isdigit() or len(fields[2]) != 12:
        return None
    return WriterId(int(fields[0]), int(fields[1]), fields[2])


def writer_is_gone(path: str | os.PathLike[str]) -> bool:
    """Whether the process that created this temporary file provably can no longer write it.

    True only when its name records a writer on this machine (same host, boot
    and pid namespace) and no process with that pid and start time is alive
    (none at all, another one that reused the pid, or a zombie). False
    otherwise, including names that record no writer: then only the file's age can tell.
    """
    writer = parse_temp_name(os.path.basename(os.fspath(path)))
    if writer is None or writer.pid <= 0 or writer.machine != machine_token():
        return False
    try:
        stat = _proc_stat(writer.pid)
    except (OSError, ValueError, IndexError):
        stat = None
    if stat is not None:
        state, start = stat
        return state in ("Z", "X") or (writer.start != 0 and start != writer.start)
    # No /proc entry: no /proc at all, or one that hides other users' processes
    # (hidepid). Only the kernel's "no such process" is proof.
    try:
        os.kill(writer.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: alive, another user's
    return False


def remove_orphaned_temps(folder: Path) -> int:
    """Deletes the temporary files in ``folder`` whose writer is provably gone; returns how many.

    Only names that `writer_is_gone` proves: a file of a live writer, of
    another machine, or with an older name is left (``check`` judges those by age).
    """
    removed = 0
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return 0
    for name in names:
        path = folder / name
        if not path.is_symlink() and writer_is_gone(path):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def create_temp(folder: Path) -> tuple[int, Path]:
    """Creates a new temporary file in ``folder``, as a plain write would create a file there.

    Returns:
        An open descriptor (write-only) and the file's path.
    """
    tag = writer_id().tag()
    while True:
        path = folder / f"{TEMP_PREFIX}{tag}-{os.urandom(4).hex()}"
        try:
            return os.open(path, _OPEN_FLAGS, 0o666), path
        except FileExistsError:
            continue


@contextmanager
def temp_file(folder: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A temporary file in ``folder`` to write and then rename into place; removed if the block raises."""
    fd, path = create_temp(folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def rewrite_log(path: Path, head: bytes, *, read_bytes: int, mode: int) -> None:
    """Replaces an append-only log with ``head`` plus whatever was appended after its first
    ``read_bytes`` bytes (lines other writers added while the caller read it are kept).

    Raises:
        OSError: the folder cannot be written (the log is left as it was).
    """
    with temp_file(path.parent) as (out, tmp):
        out.write(head)
        with open(path, "rb") as f:
            f.seek(read_bytes)
            out.write(f.read())
        os.fchmod(out.fileno(), mode)  # as the log was: in a team cache every member appends to it
        out.flush()
        os.replace(tmp, path)


def write_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replaces ``path`` with ``data`` in one step: readers see the old file or the new one, whole.

    Args:
        path: the file to write.
        data: its new contents.
        mode: permission bits to give it; by default those a plain write would
            give a new file (``0o666`` less the umask at this moment).

    Raises:
        OSError: the folder cannot be written (nothing is left behind).
    """
    with temp_file(path.parent) as (f, tmp):
        f.write(data)
        if mode is not None:
            os.fchmod(f.fileno(), mode)
        f.flush()
        os.replace(tmp, path)
