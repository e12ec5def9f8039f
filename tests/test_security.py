"""Cache folders others can write to: warnings, strict mode, and the deliberate team cache."""

from __future__ import annotations

import grp
import json
import os
import stat
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from jaxcache.cli import main
from jaxcache.errors import CacheDirError
from jaxcache.security import enforce, shared_info, writable_by_others
from jaxcache_testing import env_with, run_python


def test_private_folder_has_no_problem(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--cache-dir", str(tmp_path / "c"), "init"])
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / "c")
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert writable_by_others(tmp_path / "c") == []


@pytest.mark.parametrize("mode, who", [(0o777, "everyone"), (0o775, "its group")])
def test_writable_folder_warns_and_strict_refuses(tmp_path: Path, mode: int, who: str) -> None:
    root = tmp_path / "c"
    root.mkdir()
    root.chmod(mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enforce(root, strict=False)
    assert any(f"writable by {who}" in str(w.message) for w in caught)
    with pytest.raises(CacheDirError, match="strict mode"):
        enforce(root, strict=True)


def test_configure_in_strict_mode_refuses_before_jax_writes(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    root.chmod(0o777)
    proc = run_python(
        f"import jaxcache\ntry:\n    jaxcache.configure({str(root)!r}, strict=True)\n"
        "except jaxcache.CacheDirError as e:\n    print('refused:', e)\n",
        env=env_with(),
    )
    assert proc.stdout.startswith("refused:") and not list(root.rglob("*-cache"))


def test_hook_strict_from_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    root.chmod(0o777)
    result = CliRunner(env={"JAXCACHE_STRICT": "1"}).invoke(main, ["--cache-dir", str(root), "hook"])
    assert result.exit_code == 1 and "strict mode" in result.stderr
    relaxed = CliRunner().invoke(main, ["--cache-dir", str(root), "hook"])
    assert relaxed.exit_code == 0 and "writable by everyone" in relaxed.stderr


def test_a_world_writable_parent_without_sticky_bit(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    (parent / "c").mkdir(mode=0o700)
    assert any("parent folder" in p for p in writable_by_others(parent / "c"))
    parent.chmod(0o1777)  # like /tmp: others cannot rename what they do not own
    assert writable_by_others(parent / "c") == []


def _some_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


def test_a_shared_cache_is_group_writable_on_purpose(tmp_path: Path) -> None:
    group = _some_group()
    root = tmp_path / "team"
    result = CliRunner().invoke(main, ["--cache-dir", str(root), "init", "--shared", group])
    assert result.exit_code == 0, result.output
    st = root.stat()
    assert stat.S_IMODE(st.st_mode) == 0o2770 and st.st_gid == grp.getgrnam(group).gr_gid
    assert shared_info(root).group == group and writable_by_others(root, shared=shared_info(root)) == []
    run_python(
        "import jaxcache, jax, jax.numpy as jnp\n"
        f"jaxcache.configure({str(root)!r})\n"
        "jax.jit(lambda x: x + 2)(jnp.ones(3)).block_until_ready()\n",
        env=env_with(),
    )
    version_dir = next(root.glob("jaxlib-*"))
    assert stat.S_IMODE(version_dir.stat().st_mode) == 0o2770
    check = CliRunner().invoke(main, ["--cache-dir", str(root), "check", "--json"])
    assert [f["kind"] for f in json.loads(check.stdout)["findings"] if f["kind"] == "writable"] == []
    root.chmod(0o2777)  # world write is never part of a team cache
    assert any("everyone" in p for p in writable_by_others(root, shared=shared_info(root)))


def test_strict_mode_also_looks_at_the_version_folder(tmp_path: Path) -> None:
    root = tmp_path / "c"
    assert CliRunner().invoke(main, ["--cache-dir", str(root), "hook"]).exit_code == 0
    version_dir = next(root.glob("jaxlib-*"))
    version_dir.chmod(0o777)  # the root stays private: JAX writes here, though
    for args in (["hook"], ["run", "--", "true"]):
        result = CliRunner(env={"JAXCACHE_STRICT": "1"}).invoke(main, ["--cache-dir", str(root), *args])
        assert result.exit_code == 1 and "strict mode" in result.stderr and str(version_dir) in result.stderr
        relaxed = CliRunner().invoke(main, ["--cache-dir", str(root), *args])
        assert relaxed.exit_code == 0 and "writable by everyone" in relaxed.stderr
    with pytest.raises(CacheDirError, match="strict mode"):
        enforce(root, strict=True, jax_dir=version_dir)


def test_init_shared_on_an_existing_cache_gives_its_folders_to_the_group(tmp_path: Path) -> None:
    group = _some_group()
    gid = grp.getgrnam(group).gr_gid
    root = tmp_path / "team"
    run_python("import jaxcache, jax, jax.numpy as jnp\n"
               f"jaxcache.configure({str(root)!r}, max_size='1GB')\n"
               "jax.jit(lambda x: x + 2)(jnp.ones(3)).block_until_ready()\n", env=env_with())
    version_dir = next(root.glob("jaxlib-*"))
    version_dir.chmod(0o755)  # as made before the team cache existed
    result = CliRunner().invoke(main, ["--cache-dir", str(root), "init", "--shared", group])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(version_dir.stat().st_mode) == 0o2770 and version_dir.stat().st_gid == gid
    for path in version_dir.iterdir():  # -atime files are rewritten on every hit, by any member
        if path.is_file():
            assert path.stat().st_mode & 0o060 == 0o060 and path.stat().st_gid == gid, path
    # A folder that fell out of the team again: check finds it, --repair gives it back.
    version_dir.chmod(0o755)
    check = CliRunner().invoke(main, ["--cache-dir", str(root), "check", "--json"])
    assert [f["kind"] for f in json.loads(check.stdout)["findings"]] == ["unshared"]
    repaired = CliRunner().invoke(main, ["--cache-dir", str(root), "check", "--repair", "--yes", "--json"])
    assert repaired.exit_code == 0, repaired.output
    assert stat.S_IMODE(version_dir.stat().st_mode) == 0o2770


def test_init_with_an_unknown_group(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--cache-dir", str(tmp_path / "t"), "init", "--shared", "no-such-group-xyz"])
    assert result.exit_code == 2 and "no such group" in result.stderr
    assert not (tmp_path / "t").exists()


def test_files_members_append_to_follow_the_umask(tmp_path: Path) -> None:
    """In a team cache (umask 002) every member appends to the write log: it must be group-writable."""

    from jaxcache import provenance

    old = os.umask(0o002)
    try:
        provenance.record_write(tmp_path, "jit_f-" + "0" * 64, "cpu", 1.0)
    finally:
        os.umask(old)
    assert (tmp_path / provenance.WRITES_LOG_NAME).stat().st_mode & 0o777 == 0o664
