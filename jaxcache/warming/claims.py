"""How warm workers share a plan without a coordinator: claim files in one folder.

Workers of one process configuration see the same targets in the same order.
Each *target* is built (its objective made, "auto" probes compiled, its
kernels listed) by the first worker to claim it; that builder publishes the
kernel names. Each *kernel* is compiled by the first worker to claim its name.
A worker with nothing left to build may take unclaimed kernels of another
worker's target, which costs it one more build of that target; so building is
lazy and happens about once per target, not once per target per worker (which
made ``--jobs 2`` slower than ``--jobs 1`` on a plan of "auto" targets).

A claim is a hard link to a file of the claimant (atomic, and fails if the
name is taken, on local and NFS file systems); names are hashed, so any target
label or kernel name is a safe file name. A builder holds an ``flock`` on its
build claim for as long as it lives: the kernel drops it when the process
ends, however it ends (a crash, an OOM kill, a zombie not yet reaped), so a
worker waiting for a builder's kernel list never waits for a dead one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jaxcache import atomic

__all__ = ["ClaimBoard", "Published"]

_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Published:
    """What a target's builder published: its kernel names, or that the build failed (``None``)."""

    names: tuple[str, ...] | None


def _hashed(kind: str, *parts: str) -> str:
    return hashlib.sha256("\0".join((kind, *parts)).encode()).hexdigest()[:32]


class ClaimBoard:
    """The claims folder of one group of workers (created and removed by the parent)."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self._held: list[int] = []  # descriptors of this worker's build claims, locked until it exits

    @classmethod
    def open(cls, folder: str | os.PathLike[str] | None) -> ClaimBoard | None:
        """The board, or ``None`` if there is no usable folder (workers then split kernels by number)."""
        if folder is None or not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            return None
        return cls(folder)

    def _claim(self, name: str, *, hold: bool = False) -> bool:
        """Links a file of ours (locked first, if ``hold``) to ``name``; True if we got there first."""
        try:
            fd, temp = tempfile.mkstemp(dir=self.folder, prefix=".claim-")
        except OSError:
            return True  # the folder vanished or filled up: compiling twice is harmless, missing one is not
        try:
            if hold:
                fcntl.flock(fd, fcntl.LOCK_EX)  # before the claim is visible: no window where it looks dead
            os.link(temp, self.folder / name)
        except FileExistsError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            return True
        finally:
            try:
                os.unlink(temp)
            except OSError:
                pass
        if hold:
            self._held.append(fd)
        else:
            os.close(fd)
        return True

    def claim_build(self, target: str) -> bool:
        """Whether this worker builds ``target`` (the first to ask does)."""
        return self._claim(_hashed("build", target), hold=True)

    def claim_kernel(self, target: str, kernel: str) -> bool:
        """Whether this worker compiles that kernel (the first to ask does)."""
        return self._claim(_hashed("kernel", target, kernel))

    def is_claimed(self, target: str, kernel: str) -> bool:
        return (self.folder / _hashed("kernel", target, kernel)).exists()

    def publish(self, target: str, names: Sequence[str] | None) -> None:
        """Tells the other workers what ``target``'s kernels are (``None``: its build failed)."""
        path = self.folder / _hashed("names", target)
        try:  # readers never see half a list
            atomic.write_atomically(path, json.dumps(None if names is None else list(names)).encode())
        except OSError:
            pass  # they then leave this target to its builder

    def published(self, target: str) -> Published | None:
        """What the builder published, or ``None`` if nothing yet."""
        try:
            names = json.loads((self.folder / _hashed("names", target)).read_text())
        except (OSError, ValueError):
            return None
        return Published(None if names is None else tuple(names))

    def builder_alive(self, target: str) -> bool:
        """Whether the worker building ``target`` still runs (its lock on the claim is held)."""
        try:
            fd = os.open(self.folder / _hashed("build", target), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # also drops the shared lock, if we got it
        return False

    def wait_for_any(self, targets: Sequence[str]) -> tuple[str, Published] | None:
        """Waits until one of ``targets`` is published; returns it, or ``None`` once none can be
        (every remaining builder has ended without publishing)."""
        pending = list(targets)
        while pending:
            for target in list(pending):
                found = self.published(target)
                if found is not None:
                    return target, found
                if not self.builder_alive(target):
                    found = self.published(target)  # published just before it ended
                    if found is not None:
                        return target, found
                    pending.remove(target)
            if pending:
                time.sleep(_POLL_SECONDS)
        return None
