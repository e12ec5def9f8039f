"""The CLI end to end over real caches, through Click's CliRunner; assertions on exit codes and --json."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import zlib
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jaxcache_testing import can_mount, env_with, make_read_only, run_compile, run_python, version_folder
from jaxcache import jaxformat, provenance
from jaxcache.cli import main

INSTALLED = metadata.version("jaxlib")


def jc(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def jc_json(*args: str) -> object:
    result = jc(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, except jaxcache's own index (a scan may refresh it)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".jaxcache" not in p.relative_to(root).parts}


def age(paths: list[Path], seconds: float) -> None:
    past = time.time() - seconds
    for path in paths:
        os.utime(path, (past, past))


def add_old_version(root: Path, version: str = "0.0.1", count: int = 2) -> list[str]:
    """A second version folder holding real entries (copied) under a marker for another jaxlib."""
    src = version_folder(root)
    old = provenance.ensure_version_dir(root, provenance.VersionInfo(jaxlib=version, jax=version))
    keys = []
    for path in sorted(src.glob("*-cache"))[:count]:
        parsed = jaxformat.parse_entry_name(path.name)
        key = f"{parsed.module}-{'e' * 63}{len(keys)}"
        shutil.copy2(path, old / jaxformat.cache_file_name(key))
        keys.append(key)
    return keys


def test_dir_prints_only_the_folder(cache: Path) -> None:
    result = jc("--cache-dir", str(cache), "dir")
    assert result.exit_code == 0 and result.stdout == f"{cache}\n"
    assert jc("--cache-dir", str(cache), "dir", "--jax").stdout.strip() == str(cache / f"jaxlib-{INSTALLED}")


def test_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAXCACHE_DIR", str(tmp_path / "from-env"))
    assert jc("dir").stdout.strip() == str(tmp_path / "from-env")


def test_config_json_names_each_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAXCACHE_MAX_SIZE", "2GB")
    data = jc_json("--cache-dir", str(tmp_path), "config")
    assert data["settings"]["cache_dir"] == {"value": str(tmp_path), "source": "--cache-dir"}
    assert data["settings"]["max_size"] == {"value": 2 * 10**9, "source": "env JAXCACHE_MAX_SIZE"}
    assert data["settings"]["min_entry_size_bytes"]["source"] == "default"
    assert data["jax_options"]["jax_persistent_cache_min_compile_time_secs"] == 0
    assert data["jaxlib"] == INSTALLED


def test_inspect_json(cache: Path) -> None:
    old_keys = add_old_version(cache)
    (cache / "notes.txt").write_text("mine")
    data = jc_json("--cache-dir", str(cache), "inspect")
    entries = list(version_folder_entries(cache))
    assert data["cache_dir"] == str(cache)
    assert data["entries"] == len(entries) + len(old_keys)
    assert data["bytes"] == sum(p.stat().st_size for p in cache.rglob("*-cache"))
    assert data["allocated_bytes"] >= data["bytes"]
    assert data["by_version"][INSTALLED]["entries"] == len(entries)
    assert data["by_version"]["0.0.1"] == {
        "entries": 2,
        "bytes": sum((cache / "jaxlib-0.0.1" / f"{k}-cache").stat().st_size for k in old_keys),
        "allocated_bytes": data["by_version"]["0.0.1"]["allocated_bytes"],
    }
    assert data["other_version_entries"] == 2
    assert data["by_platform"]["cpu"]["entries"] == len(entries)
    assert "jit_step" in data["by_module"]
    assert data["other_files"] == 1


def version_folder_entries(root: Path):
    return version_folder(root).glob("*-cache") if len(list(root.glob("jaxlib-*"))) == 1 else (
        root / f"jaxlib-{INSTALLED}").glob("*-cache")


def test_inspect_counts_unknown_provenance(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    run_compile(env_with(JAXCACHE_DIR=str(root), JAXCACHE_LAYOUT="flat"))
    data = jc_json("--cache-dir", str(root), "inspect")
    assert list(data["by_version"]) == ["unknown"] and data["by_version"]["unknown"]["entries"] == data["entries"]


def test_ls_json_fields_sort_and_filter(cache: Path) -> None:
    rows = jc_json("--cache-dir", str(cache), "ls", "--sort", "size")
    assert rows and [r["bytes"] for r in rows] == sorted((r["bytes"] for r in rows), reverse=True)
    for row in rows:
        assert {"name", "key", "bytes", "version", "compile_seconds", "last_used"} <= set(row)
        assert row["key"].startswith(row["name"] + "-") and row["version"] == INSTALLED
        assert isinstance(row["compile_seconds"], int)
        assert row["last_use_recorded"] is True and row["last_used"] is not None  # configure() recorded the write
    only = jc_json("--cache-dir", str(cache), "ls", "--name", "jit_st*")
    assert [r["name"] for r in only] == ["jit_step"]


def test_prune_stale_dry_run_then_for_real(cache: Path) -> None:
    old_keys = add_old_version(cache)
    flat = cache / next(version_folder_entries(cache)).name  # an unknown-provenance entry at the root
    shutil.copy2(next(version_folder_entries(cache)), flat)
    before = snapshot(cache)

    plan = jc_json("--cache-dir", str(cache), "prune", "--stale", "--dry-run")
    assert plan["dry_run"] is True and sorted(plan["deleted"]) == sorted(old_keys)
    assert snapshot(cache) == before

    kept = jc_json("--cache-dir", str(cache), "prune", "--stale", "--keep-version", "0.0.1", "--yes")
    assert kept["deleted"] == []

    done = jc_json("--cache-dir", str(cache), "prune", "--stale", "--yes")
    assert sorted(done["deleted"]) == sorted(old_keys) and done["freed_bytes"] > 0
    after = snapshot(cache)
    gone = {k for k in before if k not in after}
    assert gone == {f"jaxlib-0.0.1/{k}-cache" for k in old_keys}
    assert flat.exists()  # unknown provenance is never stale


def test_prune_older_than(cache: Path) -> None:
    from jaxcache import uses

    entries = sorted(version_folder(cache).glob("*-cache"))
    uses.uses_path(version_folder(cache)).unlink()  # last used as recorded below, not at their write
    uses.record_uses(version_folder(cache), [p.name[:-6] for p in entries[:2]], when=time.time() - 40 * 86400)
    uses.record_uses(version_folder(cache), [p.name[:-6] for p in entries[2:]], when=time.time() - 3600)
    result = jc_json("--cache-dir", str(cache), "prune", "--older-than", "30d", "--yes")
    assert sorted(result["deleted"]) == sorted(p.name[:-6] for p in entries[:2])
    assert all(not p.exists() for p in entries[:2]) and all(p.exists() for p in entries[2:])


def test_prune_max_size_lru_then_cheapest(tmp_path: Path) -> None:
    root = tmp_path / "capped"
    run_compile(env_with(JAXCACHE_DIR=str(root), JAXCACHE_MAX_SIZE="1GB"))
    folder = version_folder(root)
    entries = sorted(folder.glob("*-cache"))
    assert len(entries) >= 3
    from jaxcache import uses

    uses.uses_path(folder).unlink()  # uses as JAX's -atime files alone record them (set below)
    # Distinct last uses for all but two, which tie; of those, the one whose header says
    # it compiled faster must go first.
    atimes = [p.with_name(p.name[:-6] + "-atime") for p in entries]
    age(atimes[:2], 1000)
    for i, path in enumerate(atimes[2:], start=2):
        age([path], 1000 - i)
    expensive, cheap = entries[0], entries[1]
    _set_compile_seconds(expensive, 30)
    _set_compile_seconds(cheap, 2)
    total = sum(p.stat().st_size for p in entries)
    target = total - cheap.stat().st_size
    result = jc_json("--cache-dir", str(root), "prune", "--max-size", str(target), "--yes")
    assert result["deleted"] == [cheap.name[:-6]]
    assert not cheap.exists() and not cheap.with_name(cheap.name[:-6] + "-atime").exists()
    result = jc_json("--cache-dir", str(root), "prune", "--max-size", "0", "--dry-run")
    assert result["deleted"][0] == expensive.name[:-6]  # then the tie's other member, then by age
    assert len(result["deleted"]) == len(entries) - 1


def _set_compile_seconds(path: Path, seconds: int) -> None:
    raw = zlib.decompress(path.read_bytes())
    mtime = path.stat().st_mtime
    path.write_bytes(zlib.compress(seconds.to_bytes(4, "big") + raw[4:]))
    os.utime(path, (mtime, mtime))


def test_prune_by_name(cache: Path) -> None:
    folder = version_folder(cache)
    log = folder / provenance.WRITES_LOG_NAME
    written = provenance.load_writes(folder)
    assert any(k.startswith("jit_step-") for k in written)
    hour_ago = f"{time.time() - 3600:.3f}"
    old_lines = [line.split("\t") for line in log.read_text().splitlines()]
    log.write_text("".join("\t".join([k, p, hour_ago, *rest]) + "\n" for k, p, _, *rest in old_lines))
    with open(log, "a") as f:
        f.write(log.read_text().splitlines()[0] + "\n")  # a key written twice (rewritten after a race)
        # A write logged a moment ago whose entry is not there yet (its writer waits for the lock).
        f.write(f"jit_inflight-{'a' * 64}\tcpu\t{time.time():.3f}\t1.000\n")
    result = jc_json("--cache-dir", str(cache), "prune", "--name", "jit_step", "--yes")
    assert len(result["deleted"]) == 1 and result["deleted"][0].startswith("jit_step-")
    assert not list(folder.glob("jit_step-*"))
    # The write log is compacted with the deletion: one line per entry still there, or still coming.
    lines = log.read_text().splitlines()
    keys = [line.split("\t")[0] for line in lines]
    assert sorted(keys) == sorted([*(k for k in written if not k.startswith("jit_step-")), f"jit_inflight-{'a' * 64}"])
    assert {k: v for k, v in provenance.load_writes(folder).items() if k in written} == {
        k: v for k, v in written.items() if k in keys}


def test_prune_refuses_without_yes_and_without_a_terminal(cache: Path) -> None:
    before = snapshot(cache)
    result = jc("--cache-dir", str(cache), "prune", "--name", "*")
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert snapshot(cache) == before


def test_clear_keeps_user_files_and_never_follows_symlinks(cache: Path, tmp_path: Path) -> None:
    (cache / "notes.txt").write_text("keep me")
    (cache / "data").mkdir()
    (cache / "data" / ("jit_x-" + "a" * 64 + "-cache")).write_bytes(b"x\x9cdata")  # not in a cache folder
    (version_folder(cache) / "README").write_text("keep me too")
    outside = tmp_path / "precious"
    outside.write_bytes(zlib.compress(b"precious"))
    (version_folder(cache) / ("jit_link-" + "b" * 64 + "-cache")).symlink_to(outside)
    result = jc_json("--cache-dir", str(cache), "clear", "--yes")
    assert result["deleted"] and not list(cache.rglob("*-cache")) or _only_protected(cache)
    assert (cache / "notes.txt").read_text() == "keep me"
    assert (cache / "data").is_dir() and len(list((cache / "data").iterdir())) == 1
    assert (version_folder(cache) / "README").exists()
    assert outside.exists()
    assert jc_json("--cache-dir", str(cache), "inspect")["entries"] == 0


def _only_protected(cache: Path) -> bool:
    left = [p for p in cache.rglob("*-cache") if not p.is_symlink() and p.parent.name != "data"]
    return not left


def test_a_folder_that_is_not_a_cache_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / ".bashrc").write_text("alias x=y")
    (home / "thesis.tex").write_text("...")
    before = snapshot(home)
    for args in (["clear", "--yes"], ["prune", "--max-size", "0", "--yes"], ["inspect"], ["check", "--repair"]):
        result = jc("--cache-dir", str(home), *args)
        assert result.exit_code == 1, args
        assert "does not look like a JAX compilation cache" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(home) == before


def test_an_empty_folder_is_an_empty_cache(tmp_path: Path) -> None:
    assert jc_json("--cache-dir", str(tmp_path), "inspect")["entries"] == 0


def test_check_is_clean_on_a_fresh_cache(cache: Path) -> None:
    age(list(cache.rglob("*-cache")), 60)
    data = jc_json("--cache-dir", str(cache), "check")
    assert data["ok"] is True and data["entries_checked"] > 0 and data["findings"] == []


def test_truncated_entry_is_found_repaired_and_rewritten(cache: Path) -> None:
    age(list(cache.rglob("*-cache")), 60)
    victim = next(version_folder(cache).glob("jit_step-*-cache"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    age([victim], 60)
    result = jc("--cache-dir", str(cache), "check", "--json")
    assert result.exit_code == 1
    findings = json.loads(result.stdout)["findings"]
    assert [(f["kind"], f["key"]) for f in findings] == [("corrupt", victim.name[:-6])]

    repaired = jc("--cache-dir", str(cache), "check", "--repair", "--yes", "--json")
    assert repaired.exit_code == 0 and json.loads(repaired.stdout)["findings"][0]["repaired"] is True
    assert not victim.exists()

    env = env_with(JAXCACHE_DIR=str(cache))
    rebuilt = run_compile(env)
    assert rebuilt["misses"] == ["jit_step"]
    assert victim.exists() and "jit_step" in run_compile(env)["hits"]


def test_missing_atime_in_a_capped_cache_is_found_and_repaired(tmp_path: Path) -> None:
    root = tmp_path / "c"
    run_compile(env_with(JAXCACHE_DIR=str(root)))  # uncapped: no -atime files
    age(list(root.rglob("*-cache")), 60)
    result = jc("--cache-dir", str(root), "check", "--json")
    assert result.exit_code == 0  # uncapped caches need no -atime
    os.environ["JAXCACHE_MAX_SIZE"] = "1GB"
    needed = jaxformat.missing_atime_breaks_writes(INSTALLED)  # jax#39880, fixed in 0.11.2
    try:
        findings = json.loads(jc("--cache-dir", str(root), "check", "--json").stdout)["findings"]
        assert {f["kind"] for f in findings} == ({"missing-atime"} if needed else set())
        assert jc("--cache-dir", str(root), "check", "--repair", "--yes").exit_code == 0
    finally:
        del os.environ["JAXCACHE_MAX_SIZE"]
    if needed:
        assert len(list(root.rglob("*-atime"))) == len(list(root.rglob("*-cache")))
    proc = run_python(
        "import jaxcache, jax, jax.numpy as jnp\n"
        "jaxcache.configure(max_size='1GB')\n"
        "jax.jit(lambda x: jnp.cos(x) * 3)(jnp.ones(5)).block_until_ready()\n",
        env=env_with(JAXCACHE_DIR=str(root)),
    )
    assert "Error writing" not in proc.stderr
    assert any(p.name.startswith("jit__lambda") for p in root.rglob("*-cache"))


def test_missing_atime_is_no_problem_where_jax_evicts_such_entries_first(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """jax#39880 was fixed in jaxlib 0.11.2: a capped write no longer needs every -atime."""
    root = tmp_path / "c"
    run_compile(env_with(JAXCACHE_DIR=str(root)))  # uncapped: no -atime files
    age(list(root.rglob("*-cache")), 60)
    folder = version_folder(root)
    monkeypatch.setenv("JAXCACHE_MAX_SIZE", "1GB")
    for version, needed in (("0.11.1", True), ("0.11.2", False), ("0.12.0.1", False)):
        (folder / ".jaxcache-version.json").write_text(json.dumps({"jaxlib": version, "jax": version}))
        kinds = {f["kind"] for f in json.loads(jc("--cache-dir", str(root), "check", "--json").stdout)["findings"]}
        assert kinds == ({"missing-atime"} if needed else set()), (version, kinds)


def fill_by_plain_jax(folder: Path) -> None:
    """Entries written by JAX set up by hand (XLA's sub-caches on: the folder's path baked into each)."""
    run_compile(env_with(), configure=(
        "import jax\n"
        f"jax.config.update('jax_compilation_cache_dir', {str(folder)!r})\n"
        "jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"))


def test_orphans_foreign_paths_and_permissions(cache: Path, tmp_path: Path) -> None:
    age(list(cache.rglob("*-cache")), 60)
    folder = version_folder(cache)
    orphan = folder / ("jit_gone-" + "c" * 64 + "-atime")
    orphan.write_bytes(jaxformat.encode_atime(time.time_ns()))
    other = tmp_path / "elsewhere"
    fill_by_plain_jax(other)
    foreign = next(other.glob("jit_step-*-cache"))
    copied = folder / ("jit_foreign-" + "d" * 64 + "-cache")
    shutil.copy2(foreign, copied)
    age([copied], 60)
    cache.chmod(0o777)
    result = jc("--cache-dir", str(cache), "check", "--json")
    assert result.exit_code == 1
    findings = {f["kind"]: f for f in json.loads(result.stdout)["findings"]}
    if jaxformat.path_in_key(INSTALLED):  # from jaxlib 0.11 the path is not in the key: the copy hits
        assert sorted(findings) == ["foreign-path", "orphan-atime", "writable"]
        assert findings["foreign-path"]["severity"] == "info" and str(other) in findings["foreign-path"]["message"]
    else:
        assert sorted(findings) == ["orphan-atime", "writable"]
    assert jc("--cache-dir", str(cache), "check", "--repair", "--yes").exit_code == 0
    assert not orphan.exists()
    assert copied.read_bytes() == foreign.read_bytes()  # a valid entry another folder's processes hit: kept
    assert stat.S_IMODE(cache.stat().st_mode) == 0o755
    assert jc_json("--cache-dir", str(cache), "check")["ok"] is True


def test_foreign_path_only_where_that_jaxlib_keys_the_path(cache: Path, tmp_path: Path) -> None:
    """From jaxlib 0.11 the folder's path leaves the key (jax#35699): a copied entry hits, so it is not foreign."""
    other = tmp_path / "elsewhere"
    fill_by_plain_jax(other)
    for version, foreign in (("0.10.2", True), ("0.11.0", False), ("0.12.0.1", False)):
        folder = cache / f"jaxlib-{version}"
        folder.mkdir(exist_ok=True)
        (folder / ".jaxcache-version.json").write_text(json.dumps({"jaxlib": version, "jax": version}))
        for entry in other.glob("*-cache"):
            shutil.copy2(entry, folder / entry.name)
        age(list(folder.glob("*-cache")), 60)
    findings = jc_json("--cache-dir", str(cache), "check")["findings"]
    flagged = {Path(f["path"]).parent.name for f in findings if f["kind"] == "foreign-path"}
    assert flagged == {"jaxlib-0.10.2"}, findings


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["prune", "--max-size", "5XB"], 2, "invalid size '5XB'"),
        (["prune", "--older-than", "tomorrow"], 2, "invalid duration 'tomorrow'"),
        (["prune"], 2, "nothing to prune"),
        (["prune", "--name", ""], 2, "invalid --name pattern"),
        (["prune", "--name", "a/b"], 2, "invalid --name pattern"),
        (["prune", "--keep-version", "0.9.2"], 2, "--keep-version only applies with --stale"),
        (["ls", "--sort", "colour"], 2, "Invalid value"),
        (["ls", "--name", "x[y"], 2, "unbalanced"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_arguments(cache: Path, args: list[str], code: int, message: str) -> None:
    before = snapshot(cache)
    result = jc("--cache-dir", str(cache), *args)
    assert result.exit_code == code and message in result.stderr
    assert "Traceback" not in result.output
    assert snapshot(cache) == before


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    missing = jc("--cache-dir", str(tmp_path / "nope"), "inspect")
    assert missing.exit_code == 1 and missing.stderr.strip() == f"jaxcache: error: no cache folder at {tmp_path / 'nope'}"
    (tmp_path / "afile").write_text("x")
    afile = jc("--cache-dir", str(tmp_path / "afile"), "prune", "--stale", "--yes")
    assert afile.exit_code == 1 and "is a file, not a folder" in afile.stderr


def test_an_unknown_config_key_is_one_warning_and_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.jaxcache]\ncache = 'x'\n")
    monkeypatch.chdir(tmp_path)
    result = jc("dir")
    assert result.exit_code == 0 and "unknown key 'cache'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("jaxcache: warning:")


@pytest.mark.skipif(not can_mount(), reason="needs root and mount to make a read-only filesystem")
def test_read_only_folder(cache: Path) -> None:
    before = snapshot(cache)
    with make_read_only(cache):
        result = jc("--cache-dir", str(cache), "clear", "--yes")
        assert result.exit_code == 1 and "read-only" in result.stderr.lower()
        assert len(result.stderr.strip().splitlines()) == 1
        assert jc_json("--cache-dir", str(cache), "inspect")["entries"] > 0
    assert snapshot(cache) == before


def test_python_m_jaxcache_and_console_script(cache: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "jaxcache", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "jaxcache, version 0.1.0"
    script = Path(sys.executable).with_name("jaxcache")
    data = json.loads(subprocess.run([str(script), "--cache-dir", str(cache), "inspect", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    assert data["entries"] > 0


def test_a_crashed_atomic_write_leaves_a_temp_file_that_check_removes(cache: Path) -> None:
    from jaxcache.atomic import TEMP_PREFIX

    age(list(cache.rglob("*-cache")), 60)
    leftover = version_folder(cache) / f"{TEMP_PREFIX}abc123"
    leftover.write_bytes(b"x\x9c partial")
    assert jc_json("--cache-dir", str(cache), "check")["ok"] is True  # young: maybe a write in progress
    age([leftover], 3600)
    result = jc("--cache-dir", str(cache), "check", "--repair", "--yes", "--json")
    findings = json.loads(result.stdout)["findings"]
    assert [(f["kind"], f["repaired"]) for f in findings] == [("stale-temp", True)] and not leftover.exists()


def test_a_temp_file_is_stale_exactly_when_its_writer_is_gone(cache: Path) -> None:
    """A name that records its writer settles it at once, whatever the file's age: a dead writer's
    file is stale while young, a live writer's (a long pull) never, however old."""
    from jaxcache import atomic

    age(list(cache.rglob("*-cache")), 60)
    folder = version_folder(cache)
    child = subprocess.run([sys.executable, "-c", (
        "import os, sys\nfrom pathlib import Path\nfrom jaxcache import atomic\n"
        "fd, path = atomic.create_temp(Path(sys.argv[1]))\nos.write(fd, b'x\\x9c partial')\nprint(path)")
        , str(folder)], capture_output=True, text=True, check=True, timeout=60)
    dead = Path(child.stdout.strip())  # its writer has exited
    fd, alive = atomic.create_temp(folder)  # this process: alive
    os.close(fd)
    age([alive], 3600)
    assert atomic.writer_is_gone(dead) and not atomic.writer_is_gone(alive)
    checked = jc("--cache-dir", str(cache), "check", "--json")
    findings = json.loads(checked.stdout)["findings"]
    assert checked.exit_code == 1 and [(f["kind"], Path(f["path"])) for f in findings] == [("stale-temp", dead)]
    result = jc("--cache-dir", str(cache), "check", "--repair", "--yes", "--json")
    assert result.exit_code == 0 and not dead.exists() and alive.exists()


def test_inspect_reuses_its_summary_only_while_no_folder_changed(cache: Path) -> None:
    from jaxcache import inspect_cache

    inspect_cache(cache, installed_version=INSTALLED)  # creates jaxcache's own index folders
    past = time.time() - 60
    for folder in (cache, *cache.glob("jaxlib-*")):
        os.utime(folder, (past, past))  # as if nothing had changed for a minute
    first = inspect_cache(cache, installed_version=INSTALLED)
    assert (cache / ".jaxcache" / "summary.json").exists()
    again = inspect_cache(cache, installed_version=INSTALLED)
    assert again == first
    assert inspect_cache(cache, installed_version="9.9.9").other_version_entries == first.entries
    # A new entry changes its folder's mtime: the summary is computed afresh.
    src = next(version_folder(cache).glob("*-cache"))
    shutil.copy2(src, src.with_name(f"jit_new-{'a' * 64}-cache"))
    after = inspect_cache(cache, installed_version=INSTALLED)
    assert after.entries == first.entries + 1 and "jit_new" in after.by_module


def test_bare_command_shows_the_help() -> None:
    result = jc()
    assert result.exit_code in (0, 2) and "Commands:" in result.output and "error" not in result.output


def test_a_closed_pipe_ends_quietly(cache: Path) -> None:
    """`jaxcache inspect | head -1`: no 'Broken pipe' error once the reader has gone."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxcache", "--cache-dir", str(cache), "inspect"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader leaves before the first line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and stderr == ""


def test_global_options_work_after_the_command_too(cache: Path, tmp_path: Path) -> None:
    before = jc_json("--cache-dir", str(cache), "inspect")
    after = jc_json("inspect", "--cache-dir", str(cache))
    assert after["entries"] == before["entries"] > 0
    # After the command wins, as the nearer option does on a command line.
    assert jc_json("--cache-dir", str(tmp_path / "elsewhere"), "ls", "--cache-dir", str(cache))
    empty = jc("inspect", "--cache-dir", " ")
    assert empty.exit_code == 2 and len(empty.stderr.strip().splitlines()) == 1


def test_run_and_hook_refuse_a_folder_that_is_not_a_cache_until_init(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / ".bashrc").write_text("alias x=y")
    before = snapshot(home)
    for args in (["hook"], ["run", "--", sys.executable, "-c", "pass"]):
        result = jc("--cache-dir", str(home), *args)
        assert result.exit_code == 1, (args, result.output)
        assert "does not look like a JAX cache" in result.stderr and "jaxcache init" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(home) == before
    assert jc("--cache-dir", str(home), "init").exit_code == 0  # a cache on purpose
    assert jc("--cache-dir", str(home), "hook").exit_code == 0
    assert (home / ".bashrc").read_text() == "alias x=y"


def test_stats_says_when_there_is_no_cache_folder(tmp_path: Path) -> None:
    result = jc("--cache-dir", str(tmp_path / "missing"), "stats")
    assert result.exit_code == 1 and "no cache folder at" in result.stderr
    assert not (tmp_path / "missing").exists()
    (tmp_path / "c").mkdir()
    data = jc_json("--cache-dir", str(tmp_path / "c"), "stats")
    assert data["runs"] == 0 and data["since"] is None


def test_long_work_shows_progress_without_a_terminal(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job log gets a line now and then (here: every item), and a last line; data stays on stdout."""
    from jaxcache import cli

    monkeypatch.setattr(cli, "_PROGRESS_FROM", 0)
    monkeypatch.setattr(cli, "_PROGRESS_LINE_SECS", 0.0)
    age(list(cache.rglob("*-cache")), 60)
    result = jc("--cache-dir", str(cache), "check", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True
    lines = [line for line in result.stderr.splitlines() if line.startswith("Checking: ")]
    assert lines and lines[-1].endswith("done"), result.stderr
    result = jc("--cache-dir", str(cache), "clear", "--yes")
    assert result.exit_code == 0 and "Deleting: " in result.stderr


def test_a_broken_entry_written_seconds_ago_is_reported_not_skipped(cache: Path) -> None:
    """A young entry may be mid-write (plain JAX writes in place): reported as unsettled, never
    silently skipped behind a "no problems", and not repaired until it has settled."""
    age(list(cache.rglob("*-cache")), 60)
    victim = next(version_folder(cache).glob("jit_step-*-cache"))
    victim.write_bytes(victim.read_bytes()[:100])  # just now
    result = jc("--cache-dir", str(cache), "check", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["ok"] is False
    assert [(f["kind"], Path(f["path"])) for f in report["findings"]] == [("unsettled", victim)]
    repaired = jc("--cache-dir", str(cache), "check", "--repair", "--yes", "--json")
    assert repaired.exit_code == 1 and victim.exists()
    age([victim], 60)  # settled: now a corrupt entry, repaired
    assert jc("--cache-dir", str(cache), "check", "--repair", "--yes").exit_code == 0 and not victim.exists()
