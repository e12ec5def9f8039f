"""What prune proves before it deletes: the scan's proof, kept in the index, and what breaks it.

A scan reads the leading bytes of each file that appears in a folder it
already follows, the first time it stats it, and keeps the verdict beside the
file's inode, size, mtime and ctime. ``execute`` deletes a file whose stat
still matches after one ``stat``; any other file (changed since, or first seen
by a folder's first scan, which only stats) is read. These tests change files
between the scan and the deletion in every way that keeps the name and show
that nothing but a proven JAX entry is deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from jaxcache import index, jaxformat
from jaxcache.prune import execute, plan_prune
from jaxcache.scanning import scan
from jaxcache_testing import version_folder

GARBAGE = b"not a JAX entry, a user's own file that happens to have the name"


def settle(folder: Path) -> list[Path]:
    """As if the index had followed the folder while JAX wrote its entries: the folder is
    indexed without them, then they appear (renamed back: the same files), are backdated
    past the index's settle window and left alone for its trust window (jaxcache/index.py)."""
    aside = folder.parent / "aside"
    aside.mkdir()
    entries = sorted(folder.glob("*-cache"))
    for p in entries:
        p.rename(aside / p.name)
    scan(folder.parent)
    past = time.time() - 3600
    for p in entries:
        (aside / p.name).rename(p)
        os.utime(p, (past, past))
    aside.rmdir()
    time.sleep(index.TRUST_AFTER_NS / 1e9 + 0.3)
    return entries


def spy_on_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every file whose head is read (the real probe runs)."""
    reads: list[str] = []
    real = index.probe

    def probe(name: str, dir_fd: int, **kw):
        if kw.get("read_head"):
            reads.append(name)
        return real(name, dir_fd, **kw)

    monkeypatch.setattr(index, "probe", probe)
    return reads


def test_a_scan_proves_each_entry_once_and_the_index_keeps_the_proof(cache: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = version_folder(cache)
    entries = settle(folder)
    info = scan(cache)
    assert len(info.entries) == len(entries) >= 3
    assert all(e.stat is not None and e.stat.proven for e in info.entries)
    stored = index.load(folder)
    assert stored is not None and set(stored.caches) == {e.key for e in info.entries}
    assert all(row.head == index.HEAD_ENTRY for row in stored.caches.values())

    reads = spy_on_reads(monkeypatch)
    again = scan(cache, quick=False)  # a full scan stats again, and keeps the proof of unchanged files
    assert reads == [] and all(e.stat.proven for e in again.entries)


def test_prune_deletes_an_unchanged_proven_entry_without_reading_it(cache: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = version_folder(cache)
    settle(folder)
    scan(cache)  # the first look proves and indexes
    plan = plan_prune(scan(cache, quick=True), everything=True)  # later: planned from the index alone
    reads = spy_on_reads(monkeypatch)
    result = execute(plan)
    assert reads == []
    assert not result.skipped and len(result.deleted) == len(plan.deletions) >= 3
    assert not list(folder.glob("*-cache"))


def _replace(path: Path) -> None:
    tmp = path.with_name("incoming")
    tmp.write_bytes(GARBAGE)
    os.replace(tmp, path)


def _rewrite_in_place(path: Path) -> None:
    """Same inode, same size, and the mtime put back: only the ctime tells."""
    st = path.stat()
    data = (GARBAGE * (st.st_size // len(GARBAGE) + 1))[: st.st_size]
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _symlink(path: Path) -> None:
    target = path.with_name("elsewhere")
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize(("change", "why"), [
    (_replace, "contents are not a JAX cache entry"),
    (_rewrite_in_place, "contents are not a JAX cache entry"),
    (_symlink, "not a regular file"),
    (_fifo, "not a regular file"),
], ids=["replaced", "rewritten-in-place-mtime-restored", "symlink", "fifo"])
def test_a_file_changed_between_scan_and_delete_is_never_deleted(cache: Path, change, why: str) -> None:
    folder = version_folder(cache)
    settle(folder)
    scan(cache)
    plan = plan_prune(scan(cache, quick=True), everything=True)
    victim = plan.deletions[0].entry
    assert victim.stat is not None and victim.stat.proven
    change(victim.path)
    before = victim.path.read_bytes() if victim.path.is_file() and not victim.path.is_symlink() else None

    result = execute(plan)

    assert [(e.key, reason) for e, reason in result.skipped] == [(victim.key, why)]
    assert os.path.lexists(victim.path)
    if change in (_replace, _rewrite_in_place):
        assert victim.path.read_bytes() == before and before.startswith(GARBAGE[:16])
    assert {e.key for e in result.deleted} == {d.entry.key for d in plan.deletions[1:]}


def test_a_foreign_file_seen_by_the_scan_is_never_deleted(cache: Path) -> None:
    folder = version_folder(cache)
    foreign = folder / jaxformat.cache_file_name("jit_mine-" + "ab" * 32)
    foreign.write_bytes(GARBAGE)
    settle(folder)
    info = scan(cache)
    row = next(e for e in info.entries if e.path == foreign)
    assert row.stat.head == index.HEAD_FOREIGN
    result = execute(plan_prune(info, name="jit_mine*"))
    assert [reason for _, reason in result.skipped] == ["contents are not a JAX cache entry"]
    assert foreign.read_bytes() == GARBAGE


def test_a_folders_first_scan_reads_nothing_and_prune_reads_what_it_deletes(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = version_folder(cache)
    shutil.rmtree(folder / index.META_DIR_NAME, ignore_errors=True)  # never scanned before
    reads = spy_on_reads(monkeypatch)
    info = scan(cache)
    assert reads == [] and all(e.stat.head == index.HEAD_UNREAD for e in info.entries)
    plan = plan_prune(info, everything=True)
    result = execute(plan)
    assert sorted(reads) == sorted(d.entry.path.name for d in plan.deletions)
    assert not result.skipped and len(result.deleted) == len(plan.deletions) >= 3


def test_an_entry_too_young_to_prove_is_read_when_deleted(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = version_folder(cache)
    settle(folder)
    fresh = folder / jaxformat.cache_file_name("jit_fresh-" + "cd" * 32)
    fresh.write_bytes(next(folder.glob("*-cache")).read_bytes())  # written just now: its ctime is too recent
    info = scan(cache)
    row = next(e for e in info.entries if e.path == fresh)
    assert row.stat.head == index.HEAD_UNREAD
    reads = spy_on_reads(monkeypatch)
    result = execute(plan_prune(info, name="jit_fresh*"))
    assert reads == [fresh.name] and [e.key for e in result.deleted] == [row.key] and not fresh.exists()
