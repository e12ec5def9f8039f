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
    assert len(after) == len(before) + 1  # the write went through (CAPPED_LATER fails on a JAX warning)
    new = [e for e in after if e.key not in {b.key for b in before}]
    assert all(e.has_atime for e in new)
    from jaxcache import jaxformat

    if not jaxformat.missing_atime_breaks_writes(metadata.version("jaxlib")):
        return  # jaxlib >= 0.11.2 evicts an entry without -atime as the oldest: nothing to backfill
    assert all(e.has_atime for e in after)
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


# --- Observing JAX changes nothing JAX logs (its own debug logging, assertLogs) ---------------
LOGGING_PROGRAM = r"""
import json, logging, sys, unittest
mode, folder = sys.argv[1], sys.argv[2]
logging.basicConfig(level=logging.WARNING)  # the user's own logging: nothing below WARNING
import jax, jax.numpy as jnp
if mode == "jaxcache":
    import jaxcache
    jaxcache.configure(folder, layout="flat", xla_caches="none")
else:  # the same settings by hand
    for name, value in [("jax_compilation_cache_dir", folder), ("jax_persistent_cache_min_compile_time_secs", 0),
                        ("jax_persistent_cache_min_entry_size_bytes", 0),
                        ("jax_persistent_cache_enable_xla_caches", "none")]:
        jax.config.update(name, value)

def first(x):
    return jnp.sin(x) + 1

def second(x):
    return jnp.cos(x) * 3

x = jnp.arange(4.0)
x.block_until_ready()
test = unittest.TestCase()
with test.assertLogs("jax._src.compiler", level="DEBUG") as compiler, \
        test.assertLogs("jax._src.compilation_cache", level="DEBUG") as cache:
    jax.jit(first)(x).block_until_ready()
asserted = sorted([r.name, r.levelname, r.msg] for r in compiler.records + cache.records)
# The user turns JAX's debug logging on after configuring: JAX's own handler prints to stderr.
sys.stderr.write("--- debug on ---\n")
jax.config.update("jax_debug_log_modules", "jax._src.compiler,jax._src.compilation_cache")
jax.jit(second)(x).block_until_ready()
print(json.dumps(asserted))
"""


def _logging_run(tmp_path: Path, mode: str) -> tuple[list[list[str]], str, str]:
    proc = run_python(LOGGING_PROGRAM.replace("sys.argv[1], sys.argv[2]", f"{mode!r}, {str(tmp_path / mode)!r}"),
                      env=env_with())
    before, _, after = proc.stderr.partition("--- debug on ---\n")
    return json.loads(proc.stdout.strip().splitlines()[-1]), before, after


def test_jaxs_own_debug_logging_is_the_same_with_jaxcache_configured(tmp_path: Path) -> None:
    """assertLogs(level="DEBUG") and jax_debug_log_modules see the same records with jaxcache
    as without; and without either, the user's WARNING-level logging sees nothing new."""
    plain, plain_before, plain_after = _logging_run(tmp_path, "plain")
    configured, configured_before, configured_after = _logging_run(tmp_path, "jaxcache")
    assert configured == plain
    assert ["jax._src.compiler", "DEBUG", "PERSISTENT COMPILATION CACHE MISS for '%s' with key %r"] in plain
    assert ["jax._src.compilation_cache", "DEBUG", "Writing %s to persistent compilation cache with key %r"] in plain
    for before in (plain_before, configured_before):
        assert "PERSISTENT COMPILATION CACHE" not in before and "Writing" not in before
    for text in ("PERSISTENT COMPILATION CACHE MISS for 'jit_second'", "Writing jit_second to persistent"):
        # Once from JAX's debug handler; jax 0.6 also propagates it to the root logger's handler.
        assert plain_after.count(text) == configured_after.count(text) >= 1, (text, configured_after[-2000:])


# --- Entry modes follow the umask at the moment of writing --------------------------------------
UMASK_PROGRAM = r"""
import json, os, stat, sys
renamed = []  # entries renamed into place: the atomic write, not JAX's plain one
sys.addaudithook(lambda event, args: renamed.append(1) if event == "os.rename" and str(args[1]).endswith("-cache")
                 else None)
import jaxcache, jax, jax.numpy as jnp
folder, capped, atomic = sys.argv[1], sys.argv[2] == "capped", sys.argv[3] == "atomic"
configured = jaxcache.configure(folder, max_size="1GB" if capped else None, atomic_writes=atomic)
os.umask(0o077)  # set after configure, as a job script or a library might
jax.jit(lambda x: jnp.tanh(x) * 2)(jnp.ones(3)).block_until_ready()
modes = {name.rsplit("-", 1)[1]: oct(stat.S_IMODE(os.stat(os.path.join(configured.jax_dir, name)).st_mode))
         for name in os.listdir(configured.jax_dir) if name.startswith("jit__lambda")}
modes["renamed"] = bool(renamed)
print(json.dumps(modes))
"""


def test_entry_modes_follow_the_umask_at_the_moment_of_writing(tmp_path: Path) -> None:
    """As JAX's own plain write: 0600 under a umask of 077 set after configure, capped or not,
    whichever path type JAX uses (pathlib, or epath when etils is installed)."""
    def modes(capped: str, atomic: str, paths: str) -> dict[str, str]:
        folder = tmp_path / capped / atomic / paths
        code = UMASK_PROGRAM.replace('sys.argv[1], sys.argv[2] == "capped", sys.argv[3] == "atomic"',
                                     f"{str(folder)!r}, {capped == 'capped'}, {atomic == 'atomic'}")
        if paths == "pathlib":
            code = "import sys\nsys.modules['etils'] = None\n" + code
        return json.loads(run_python(code, env=env_with()).stdout.strip().splitlines()[-1])

    for capped in ("capped", "uncapped"):
        plain = modes(capped, "plain", "pathlib")
        assert plain.pop("renamed") is False
        assert set(plain.values()) == {"0o600"}
        assert sorted(plain) == (["atime", "cache"] if capped == "capped" else ["cache"])
        for paths in ("pathlib", "epath"):
            atomic = modes(capped, "atomic", paths)
            assert atomic.pop("renamed") is True, (capped, paths)
            assert atomic == plain, (capped, paths)


def test_jaxcache_never_reads_the_process_umask() -> None:
    """os.umask can only be read by setting it, which races every other thread's file creation."""
    import jaxcache

    package = Path(jaxcache.__file__).parent
    callers = [str(p.relative_to(package)) for p in package.rglob("*.py") if "os.umask(" in p.read_text()]
    assert callers == []


# --- A suite that checks JAX's global config stays green under pytest --jaxcache -----------------
GLOBAL_CONFIG_SUITE = r'''
import tempfile
import jax
from jax._src import compilation_cache as cc
from jax._src import config


def test_enable_compilation_cache_leaves_global_config_as_it_was():
    """What JAX's own JaxTestCase checks around test_enable_compilation_cache."""
    before = dict(config.config.values)
    with tempfile.TemporaryDirectory() as folder, config.persistent_cache_min_entry_size_bytes(0), \
            config.enable_compilation_cache(True), config.compilation_cache_dir(folder):
        cc.reset_cache()
        jax.jit(lambda x: x * 3)(2)
    cc.reset_cache()
    after = dict(config.config.values)
    assert {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)} == {}
'''


def test_a_suite_checking_jaxs_global_config_stays_green_under_the_plugin(tmp_path: Path) -> None:
    import subprocess
    import sys

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_global_config.py").write_text(GLOBAL_CONFIG_SUITE)
    for args in ([], [f"--jaxcache={tmp_path / 'cache'}"], ["-n", "2", f"--jaxcache={tmp_path / 'cache'}"]):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(suite)],
                              capture_output=True, text=True, cwd=suite, env=env_with(), timeout=600)
        assert proc.returncode == 0, (args, proc.stdout[-3000:])


def test_configure_refuses_a_folder_that_is_not_a_cache(tmp_path: Path) -> None:
    """A home folder given by mistake gets no jaxlib-*/ and .jaxcache/ (as run and hook refuse it)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("...")
    proc = run_python(
        "import jaxcache\n"
        "try:\n"
        f"    jaxcache.configure({str(home)!r})\n"
        "except jaxcache.NotACacheError as e:\n"
        "    print('REFUSED', e)\n", check=True)
    assert "REFUSED" in proc.stdout and "jaxcache init" in proc.stdout
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
