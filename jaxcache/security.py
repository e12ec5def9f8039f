"""Who can write to a cache folder. A JAX cache is code: JAX loads and runs its entries,
so whoever can write to the folder (or replace it through a parent) can run code in
every process that uses it (see the warning on ``jax.config.update("jax_compilation_cache_dir")``)."""

from __future__ import annotations

import stat as statmod
from pathlib import Path


def writable_by_others(folder: Path, *, parents: bool = True) -> list[str]:
    """Why others could write to this folder or replace it through a parent, if they can."""
    problems = []
    for path in (folder, *folder.parents) if parents else (folder,):
        try:
            st = path.stat()
        except OSError:
            continue
        sticky = bool(st.st_mode & statmod.S_ISVTX)
        if path == folder and st.st_mode & (statmod.S_IWGRP | statmod.S_IWOTH):
            who = "everyone" if st.st_mode & statmod.S_IWOTH else "its group"
            problems.append(f"{path} is writable by {who}: whoever can write to a JAX cache can run code in every process using it")
        elif path != folder and st.st_mode & statmod.S_IWOTH and not sticky:
            problems.append(f"parent folder {path} is writable by everyone (no sticky bit): the cache can be replaced")
    return problems
