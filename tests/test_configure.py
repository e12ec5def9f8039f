"""jaxcache.configure() with real JAX in fresh processes."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

from jaxcache_testing import env_with, run_compile, run_python, version_folder
from jaxcache import provenance, scan


def test_a_fresh_process_hits_what_another_wrote(tmp_path: Path) -> None:
    env = env_with(JAXCACHE_DIR=str(tmp_path / "c"))
    first = run_compile(env)
    second = run_compile(env)
    assert "jit_step" in first["misses"] and not first["hits"]
    assert sorted(second["hits"]) == sorted(first["misses"]) and not second["misses"]


def test_provenance_of_every_entry(tmp_path: Path) -> None:
    root = tmp_path / "c"
    events = run_compile(env_with(JAXCACHE_DIR=str(root)))
    folder = version_folder(root)
    assert folder.name == f"jaxlib-{metadata.version('jaxlib')}"
    marker = json.loads((folder / provenance.MARKER_NAME).read_text())
    assert marker["jaxlib"] == metadata.version("jaxlib") and marker["jax"] == metadata.version("jax")
    info = scan(root)
    assert sorted(e.module for e in info.entries) == sorted(events["misses"])
    assert {e.version for e in info.entries} == {metadata.version("jaxlib")}
    assert {e.platform for e in info.entries} == {"cpu"}


def test_a_flat_folder_set_up_by_hand_has_unknown_provenance(tmp_path: Path) -> None:
    root = tmp_path / "jax-caches"
    run_compile(
        env_with(),
        configure=f"""
import jax
jax.config.update("jax_compilation_cache_dir", {str(root)!r})
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
""",
    )
    info = scan(root)
    assert info.entries and {(e.version, e.platform) for e in info.entries} == {(None, None)}


def test_the_flat_layout_shares_entries_with_processes_set_up_by_hand(tmp_path: Path) -> None:
    root = tmp_path / "jax-caches"
    by_hand = run_compile(env_with(), configure=f"""
import jax
jax.config.update("jax_compilation_cache_dir", {str(root)!r})
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
""")
    assert by_hand["misses"] and not by_hand["hits"]
    # Same keys both ways: "auto" keeps JAX's default XLA cache setting in a flat folder.
    flat = run_compile(env_with(JAXCACHE_DIR=str(root), JAXCACHE_LAYOUT="flat"))
    assert sorted(flat["hits"]) == sorted(by_hand["misses"]) and not flat["misses"]
    # With the default layout jaxcache's processes would not see them: inspect says so.
    shown = run_python(f"from jaxcache.cli import main; main(['--cache-dir', {str(root)!r}, 'inspect'])", check=False)
    assert shown.returncode == 0 and "directly in" in shown.stdout and 'layout = "flat"' in shown.stdout


def test_relative_and_symlinked_paths_reach_jax_absolute(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    proc = run_python(
        """
import jax, jaxcache
a = jaxcache.configure("link/cache")
print(jax.config.jax_compilation_cache_dir)
""",
        cwd=tmp_path,
    )
    assert proc.stdout.strip() == str(tmp_path / "real" / "cache" / f"jaxlib-{metadata.version('jaxlib')}")


def test_a_copied_cache_still_hits(tmp_path: Path) -> None:
    """On CPU configure() turns XLA's GPU sub-caches off, which takes the path out of every key."""
    first = run_compile(env_with(JAXCACHE_DIR=str(tmp_path / "here")))
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    moved = run_compile(env_with(JAXCACHE_DIR=str(tmp_path / "there")))
    assert sorted(moved["hits"]) == sorted(first["misses"]) and not moved["misses"]


def test_configure_after_a_compile_warns(tmp_path: Path) -> None:
    proc = run_python(
        f"""
import warnings, jax, jax.numpy as jnp, jaxcache
jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jaxcache.configure({str(tmp_path / "late")!r})
print([str(w.message) for w in caught])
"""
    )
    assert "already compiled" in proc.stdout


def test_switching_folders_after_jax_opened_one(tmp_path: Path) -> None:
    proc = run_python(
        f"""
import warnings, jax, jax.numpy as jnp, jaxcache
jaxcache.configure({str(tmp_path / "first")!r})
jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jaxcache.configure({str(tmp_path / "second")!r})
jax.jit(lambda x: x * 7)(jnp.ones(3)).block_until_ready()
print([str(w.message) for w in caught])
"""
    )
    assert "switching to" in proc.stdout
    # jax 0.6 names a jitted lambda jit__lambda_, newer ones jit__lambda
    assert any(e.module.startswith("jit__lambda") for e in scan(tmp_path / "second").entries)


def test_provenance_recording_adds_no_log_output(tmp_path: Path) -> None:
    proc = run_python(
        f"""
import logging, jax, jax.numpy as jnp, jaxcache
logging.basicConfig(level=logging.INFO)
jaxcache.configure({str(tmp_path / "c")!r})
jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
"""
    )
    assert "Writing" not in proc.stderr
    assert scan(tmp_path / "c").entries[0].platform == "cpu"


def test_a_size_cap_makes_jax_keep_atime_files(tmp_path: Path) -> None:
    root = tmp_path / "capped"
    run_compile(env_with(JAXCACHE_DIR=str(root), JAXCACHE_MAX_SIZE="1GB"))
    info = scan(root)
    assert info.entries and all(e.has_atime for e in info.entries)
    assert all(f.has_lockfile for f in info.folders if f.version)


CAPPED_LATER = """
import warnings
warnings.simplefilter("error")  # JAX reports a failed write as a warning
import jaxcache
jaxcache.configure(max_size="1MB")
import jax
jax.jit(lambda x: x * 5)(2.0)
"""


def test_a_cap_set_on_a_folder_filled_without_one_does_not_break_writes(tmp_path: Path) -> None:
    # jax-ml/jax#39880: JAX's eviction reads every entry's -atime, which an uncapped run never wrote.
    root = tmp_path / "c"
    run_compile(env_with(JAXCACHE_DIR=str(root)))
    before = scan(root).entries
    assert before and not any(e.has_atime for e in before)
    proc = run_python(CAPPED_LATER, env=env_with(JAXCACHE_DIR=str(root)), check=False)
    assert proc.returncode == 0, proc.stderr
    after = scan(root).entries
    assert len(after) == len(before) + 1 and all(e.has_atime for e in after)
    # The backfilled last use is the entry's write time, so LRU eviction keeps its order.
    for entry in before:
        atime = version_folder(root) / f"{entry.key}-atime"
        assert int.from_bytes(atime.read_bytes(), "little") == entry.path.stat().st_mtime_ns


def test_public_api_names_are_the_functions_whatever_was_imported_first() -> None:
    code = """
import jaxcache
from jaxcache import summary, integrity, prerun, warming, scanning, configuration  # noqa: F401
for name in ("scan", "check", "configure", "hook", "warm", "verify", "plan_prune", "inspect_cache", "run"):
    assert callable(getattr(jaxcache, name)) and not type(getattr(jaxcache, name)).__name__ == "module", name
print("ok")
"""
    assert run_python(code).stdout.strip() == "ok"


def test_atime_backfill_is_skipped_only_while_the_folder_is_unchanged(cache: Path, tmp_path: Path) -> None:
    import os
    import time

    from jaxcache.atimes import STAMP_NAME, ensure_atimes

    folder = version_folder(cache)
    entries = sorted(folder.glob("*-cache"))
    assert entries and not list(folder.glob("*-atime"))
    spare = tmp_path / entries[-1].name
    entries[-1].rename(spare)
    assert ensure_atimes(folder) == len(entries) - 1
    time.sleep(2.1)  # a folder changed within the last 2 s is never stamped
    assert ensure_atimes(folder) == 0 and (folder / STAMP_NAME).exists()
    time.sleep(2.1)
    assert ensure_atimes(folder) == 0  # the stamp file's creation moved the ctime once; now it holds
    stamped = (folder / STAMP_NAME).read_text()
    assert ensure_atimes(folder) == 0 and (folder / STAMP_NAME).read_text() == stamped
    # An entry arriving as tar or rsync -a bring it: the folder's mtime is set back, its ctime is not.
    spare.rename(folder / spare.name)
    os.utime(folder, (0, 0))
    assert ensure_atimes(folder) == 1
    assert (folder / (spare.name[: -len("-cache")] + "-atime")).exists()
