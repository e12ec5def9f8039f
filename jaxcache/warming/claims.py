"""How warm workers share a plan without a coordinator: claim files in one folder.

Workers of one process configuration see the same targets in the same order.
Each *target* is built (its objective made, "auto" probes compiled, its
kernels listed) by the first worker to claim it; that builder publishes the
kernel names. Each *kernel* is compiled by the first worker to claim its name.
A worker with nothing left to build may take unclaimed kernels of another
worker's target, which costs it one more build of that target; so building is
lazy and happens about once per target, not once per target per worker (which
made ``--jobs 2`` slower than ``--jobs 1`` on a plan of "auto" targets).

Every claim is an ``O_EXCL`` create, atomic on local and NFS v3+ file systems;
names are hashed so any target label or kernel name is a safe file name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClaimBoard", "Published"]

_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Published:
    """What a target's builder published: its kernel names, or that the build failed (``None``)."""

    names: tuple[str, ...] | None


def _hashed(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that number: assume ours, and keep waiting
    return True


class ClaimBoard:
    """The claims folder of one group of workers (created and removed by the parent)."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    @classmethod
    def open(cls, folder: str | os.PathLike[str] | None) -> ClaimBoard | None:
        """The board, or ``None`` if there is no usable folder (workers then split kernels by number)."""
        if folder is None or not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            return None
        return cls(folder)

    def _create(self, name: str, content: str = "") -> bool:
        try:
            fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        except OSError:
            # The folder vanished or filled up: compiling a kernel twice is harmless, missing one is not.
            return True
        with os.fdopen(fd, "w") as f:
            f.write(content)
        return True

    def claim_build(self, target: str) -> bool:
        """Whether this worker builds ``target`` (the first to ask does)."""
        return self._create(_hashed(target, "<build>"), str(os.getpid()))

    def claim_kernel(self, target: str, kernel: str) -> bool:
        """Whether this worker compiles that kernel (the first to ask does)."""
        return self._create(_hashed(target, kernel))

    def is_claimed(self, target: str, kernel: str) -> bool:
        return (self.folder / _hashed(target, kernel)).exists()

    def publish(self, target: str, names: Sequence[str] | None) -> None:
        """Tells the other workers what ``target``'s kernels are (``None``: its build failed)."""
        path = self.folder / _hashed(target, "<names>")
        temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            temp.write_text(json.dumps(None if names is None else list(names)))
            os.replace(temp, path)  # readers never see half a list
        except OSError:
            pass  # they then leave this target to its builder

    def published(self, target: str) -> Published | None:
        """What the builder published, or ``None`` if nothing yet."""
        try:
            names = json.loads((self.folder / _hashed(target, "<names>")).read_text())
        except (OSError, ValueError):
            return None
        return Published(None if names is None else tuple(names))

    def builder_alive(self, target: str) -> bool:
        """Whether the worker building ``target`` may still publish (a dead one never will)."""
        try:
            text = (self.folder / _hashed(target, "<build>")).read_text().strip()
        except OSError:
            return False
        return not text or _alive(int(text))  # empty: the claim was made, the pid not yet written

    def wait_for_any(self, targets: Sequence[str]) -> tuple[str, Published] | None:
        """Waits until one of ``targets`` is published; returns it, or ``None`` once none can be
        (every remaining builder has died)."""
        pending = list(targets)
        while pending:
            for target in list(pending):
                found = self.published(target)
                if found is not None:
                    return target, found
                if not self.builder_alive(target):
                    pending.remove(target)
            if pending:
                time.sleep(_POLL_SECONDS)
        return None
