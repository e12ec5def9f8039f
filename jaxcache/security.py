"""Who can write to a cache folder, and the deliberate shared cache.

A JAX cache is code: JAX deserializes and runs its entries, so whoever can
write to the folder (or replace it through a parent) can run code in every
process that uses it (JAX's own warning on ``jax_compilation_cache_dir``).

A private cache must be writable by its owner only. A team cache is made on
purpose with :func:`init_shared` (``jaxcache init --shared GROUP``): owned by
that group, setgid so everything created inside stays in the group, group
writable, never world writable, and marked in ``<root>/.jaxcache/shared.json``.
Group write permission on a marked shared cache is expected; anything else is
reported (``check``), warned about (``configure``, ``hook``), or refused in
strict mode (``strict = true`` in the config, ``JAXCACHE_STRICT=1``).
"""

from __future__ import annotations

import grp
import json
import os
import stat as statmod
import warnings
from dataclasses import dataclass
from pathlib import Path

from jaxcache.errors import CacheDirError, UsageError

SHARED_MARKER = Path(".jaxcache") / "shared.json"
SHARED_MODE = 0o2770  # setgid, rwx for owner and group, nothing for others


@dataclass(frozen=True)
class Shared:
    """A deliberate shared cache: the group it belongs to."""

    group: str
    gid: int


def shared_info(root: Path) -> Shared | None:
    """The shared-cache marker of a root, if it has a trustworthy one (not a symlink)."""
    marker = root / SHARED_MARKER
    try:
        if marker.is_symlink():
            return None
        data = json.loads(marker.read_text())
        return Shared(group=str(data["group"]), gid=int(data["gid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def writable_by_others(folder: Path, *, parents: bool = True, shared: Shared | None = None) -> list[str]:
    """Why others could write to this folder or replace it through a parent, if they can.

    Args:
        folder: the cache root or a version folder.
        parents: also look at every parent (world-writable without the sticky bit).
        shared: the root's shared-cache marker: then group write by that group is expected.
    """
    problems = []
    for path in (folder, *folder.parents) if parents else (folder,):
        try:
            st = path.stat()
        except OSError:
            continue
        if path == folder:
            if st.st_mode & statmod.S_IWOTH:
                problems.append(f"{path} is writable by everyone: whoever can write to a JAX cache can run code "
                                "in every process using it")
            elif st.st_mode & statmod.S_IWGRP and not (shared is not None and st.st_gid == shared.gid):
                problems.append(f"{path} is writable by its group: whoever can write to a JAX cache can run code "
                                "in every process using it (make a team cache with `jaxcache init --shared GROUP`)")
        elif st.st_mode & statmod.S_IWOTH and not st.st_mode & statmod.S_ISVTX:
            problems.append(f"parent folder {path} is writable by everyone (no sticky bit): the cache can be replaced")
    return problems


def cache_problems(root: Path, jax_dir: Path | None = None) -> list[str]:
    """`writable_by_others` for the root and its parents, and for the folder JAX writes into."""
    shared = shared_info(root)
    problems = writable_by_others(root, shared=shared)
    if jax_dir is not None and jax_dir != root:
        problems += writable_by_others(jax_dir, parents=False, shared=shared)
    return problems


def enforce(root: Path, *, strict: bool, stacklevel: int = 3, jax_dir: Path | None = None) -> list[str]:
    """Warns about (or, in strict mode, refuses) a folder others can write to: the root, its
    parents, and ``jax_dir``, the version folder JAX writes into.

    Raises:
        CacheDirError: strict mode and a problem was found.
    """
    problems = cache_problems(root, jax_dir)
    if problems and strict:
        raise CacheDirError(f"refusing an unsafe cache folder (strict mode): {problems[0]}")
    for problem in problems:
        warnings.warn(f"jaxcache: {problem}", stacklevel=stacklevel)
    return problems


def init_shared(root: Path, group: str) -> Shared:
    """Creates (or converts) a team cache owned by ``group``: setgid, group-writable, not world-writable.

    Raises:
        UsageError: no such group.
        CacheDirError: the folder cannot be created or given to the group.
    """
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"no such group: {group!r}") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        for folder in (root, root / ".jaxcache"):
            folder.mkdir(exist_ok=True)
            os.chown(folder, -1, gid)
            os.chmod(folder, SHARED_MODE)
        for folder in _version_folders(root):
            _share_folder(folder, gid)
        marker = root / SHARED_MARKER
        marker.write_text(json.dumps({"group": group, "gid": gid}) + "\n")
        os.chown(marker, -1, gid)
        os.chmod(marker, 0o664)
    except PermissionError as e:
        raise CacheDirError(f"permission denied: cannot give {e.filename or root} to group {group!r}") from None
    except OSError as e:
        raise CacheDirError(f"cannot set up the shared cache {root}: {e.strerror}") from None
    return Shared(group=group, gid=gid)


def _version_folders(root: Path) -> list[Path]:
    """The marked version folders of a root, and their stores of whole executables."""
    from jaxcache import exeformat, provenance

    out = []
    for child in sorted(root.glob(provenance.VERSION_DIR_PREFIX + "*")):
        if child.is_dir() and not child.is_symlink() and provenance.read_marker(child) is not None:
            out.append(child)
            store = child / exeformat.FOLDER_NAME
            if store.is_dir() and not store.is_symlink():
                out.append(store)
    return out


def _share_folder(folder: Path, gid: int) -> None:
    """An existing folder of a cache made a team cache: the group writes there, and rewrites
    its files (``-atime`` on every hit, the write log), as the umask 002 of members will."""
    os.chown(folder, -1, gid)
    os.chmod(folder, SHARED_MODE)
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            os.chown(path, -1, gid)
            os.chmod(path, (statmod.S_IMODE(path.stat().st_mode) | 0o060) & ~0o002)


def unshared_folders(root: Path) -> list[Path]:
    """Version folders of a team cache that its group cannot write to (or that another group owns)."""
    shared = shared_info(root)
    if shared is None:
        return []
    out = []
    for folder in _version_folders(root):
        st = folder.stat()
        if st.st_gid != shared.gid or (st.st_mode & 0o070) != 0o070:
            out.append(folder)
    return out


def share_folder(root: Path, folder: Path) -> None:
    """Gives one folder of a team cache (and its files) to the team's group.

    Raises:
        OSError: not permitted (only the owner, or root, may).
    """
    shared = shared_info(root)
    if shared is None:
        raise OSError(f"{root} is not a team cache")
    _share_folder(folder, shared.gid)


def init_private(root: Path) -> None:
    """Creates a cache folder only its owner can write to (or marks an existing one a cache).

    Raises:
        CacheDirError: the folder cannot be created.
    """
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Marks the folder a cache on purpose: commands that create entries
        # refuse a non-empty folder without such a mark (a home folder by mistake).
        (root / ".jaxcache").mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        raise CacheDirError(f"cannot create {root}: {e.strerror}") from None
