"""Bundles: ``jaxcache export`` in one folder, ``jaxcache import`` in another, each node a fresh process.

On jax 0.10 a bundle hits after import elsewhere only if its entries' keys
hold no folder path: jaxcache's default (``xla_caches = auto``, no GPU plugin
installed) writes them that way, and the first test proves it with real solves.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

from jaxcache import jaxformat
from jaxcache.configuration import gpu_plugin_installed, resolve_xla_caches
from test_fleet import (
    JAXLIB,
    cli,
    cli_json,
    compiled_no_solver_kernel,
    names_in,
    node_env,
    solve_counts,
    synthetic_cache,
    warmed,  # noqa: F401 (a fixture)
    warmed_once,  # noqa: F401 (a fixture)
)
from jaxcache_testing import run_compile


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else {}


def test_a_bundle_made_in_one_folder_hits_after_import_into_another(warmed: Path, tmp_path: Path) -> None:  # noqa: F811
    assert not gpu_plugin_installed() and resolve_xla_caches("auto") == "none"  # what makes this hold on jax 0.10
    env = node_env(tmp_path / "home")
    bundle = tmp_path / "carry" / "jax-cache.tar"
    bundle.parent.mkdir()
    exported = cli_json("--cache-dir", str(warmed), "export", "-o", str(bundle), env=env)
    assert exported["objects"] > 0 and exported["refused"] == []

    other = tmp_path / "somewhere" / "else" / "cache"
    plan = cli_json("--cache-dir", str(other), "import", str(bundle), "--dry-run", env=env)
    assert len(plan["fetch"]) == exported["objects"] and plan["skipped"] == [] and not other.exists()
    done = cli_json("--cache-dir", str(other), "import", str(bundle), env=env)
    assert done["transferred"]["done"] == exported["objects"]
    assert names_in(other / f"jaxlib-{JAXLIB}") == names_in(warmed / f"jaxlib-{JAXLIB}")
    assert compiled_no_solver_kernel(solve_counts(other, env))
    # JAX's own entries alone, too (the executable store off).
    plain = tmp_path / "plain" / "cache"
    store_off = node_env(tmp_path / "home2", JAXCACHE_EXECUTABLES="0")
    cli_json("--cache-dir", str(plain), "import", str(bundle), env=store_off)
    assert compiled_no_solver_kernel(solve_counts(plain, store_off))
    again = cli_json("--cache-dir", str(other), "import", str(bundle), env=env)
    assert again["fetch"] == [] and again["here"] == exported["objects"]


def test_entries_keyed_to_their_folder_are_not_imported_elsewhere(tmp_path: Path) -> None:
    """With XLA's sub-caches on, jax 0.10 puts the folder in the key: import says so and
    skips them, and a plain copy proves they would indeed miss there."""
    env = node_env(tmp_path / "home")
    on = "xla_gpu_per_fusion_autotune_cache_dir"
    first = run_compile(env, configure=f"import jaxcache; jaxcache.configure({str(tmp_path / 'a')!r}, xla_caches={on!r})")
    assert first["misses"] and not first["hits"]
    bundle = tmp_path / "keyed.tar"
    cli_json("--cache-dir", str(tmp_path / "a"), "export", "-o", str(bundle), env=env)
    keyed_env = node_env(tmp_path / "home", JAXCACHE_XLA_CACHES=on)
    plan = cli_json("--cache-dir", str(tmp_path / "b"), "import", str(bundle), "--dry-run", env=keyed_env)
    keyed = jaxformat.path_in_key(metadata.version("jaxlib"))  # from jax 0.11 the folder left the key
    if keyed:
        assert plan["fetch"] == [] and plan["skipped"]
        assert all("its key holds" in s["reason"] for s in plan["skipped"])
    else:
        assert plan["fetch"] and not any("its key holds" in s["reason"] for s in plan["skipped"])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copied = run_compile(env, configure=f"import jaxcache; jaxcache.configure({str(tmp_path / 'b')!r}, xla_caches={on!r})")
    if keyed:
        assert copied["hits"] == [] and sorted(copied["misses"]) == sorted(first["misses"])
    else:
        assert copied["misses"] == [] and sorted(copied["hits"]) == sorted(first["misses"])


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def _write(bundle: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(bundle, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _altered_object(members: dict[str, bytes]) -> dict[str, bytes]:
    name = next(n for n in members if n.startswith("objects/"))
    data = bytearray(members[name])
    data[len(data) // 2] ^= 0xFF
    return {**members, name: bytes(data)}


def _other_version(members: dict[str, bytes]) -> dict[str, bytes]:
    envelope = json.loads(members["MANIFEST.json"])
    envelope["manifest"]["jaxlib"] = "0.4.1"
    return {**members, "MANIFEST.json": json.dumps(envelope).encode()}


@pytest.mark.parametrize("damage", ["truncated", "altered object", "missing object", "not a bundle"])
def test_a_damaged_bundle_is_refused_in_one_line_and_imports_nothing(tmp_path: Path, damage: str) -> None:
    env = node_env(tmp_path / "home")
    synthetic_cache(tmp_path / "a", 6, tag="b", size=20_000)
    bundle = tmp_path / "b.tar"
    cli_json("--cache-dir", str(tmp_path / "a"), "export", "-o", str(bundle), env=env)
    members = _members(bundle)
    if damage == "truncated":
        bundle.write_bytes(bundle.read_bytes()[: bundle.stat().st_size * 2 // 3])
    elif damage == "altered object":
        _write(bundle, _altered_object(members))
    elif damage == "missing object":
        _write(bundle, dict(list(members.items())[:-1]))
    else:
        bundle.write_bytes(b"hello")
    target = tmp_path / "target"
    synthetic_cache(target, 2, tag="existing")
    before = snapshot(target)
    proc = cli("--cache-dir", str(target), "import", str(bundle), env=env)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nothing imported" in proc.stderr
    assert snapshot(target) == before


def test_signed_bundles(tmp_path: Path) -> None:
    key = "0123456789abcdef0123456789abcdef"
    signer = node_env(tmp_path / "home", JAXCACHE_FLEET_KEY=key)
    synthetic_cache(tmp_path / "a", 3, tag="sb")
    bundle = tmp_path / "s.tar"
    assert cli_json("--cache-dir", str(tmp_path / "a"), "export", "-o", str(bundle), env=signer)["signed"]
    ok = cli_json("--cache-dir", str(tmp_path / "ok"), "import", str(bundle), "--strict", env=signer)
    assert ok["signature"] == "signed" and len(ok["fetch"]) == 3
    other = node_env(tmp_path / "home", JAXCACHE_FLEET_KEY="x" * 32)
    proc = cli("--cache-dir", str(tmp_path / "no"), "import", str(bundle), env=other)
    assert proc.returncode == 1 and "another key" in proc.stderr and not (tmp_path / "no").exists()
    # Altering the manifest itself (here: its version) breaks the signature.
    _write(bundle, _other_version(_members(bundle)))
    proc = cli("--cache-dir", str(tmp_path / "no"), "import", str(bundle), env=signer)
    assert proc.returncode == 1 and "altered" in proc.stderr and not (tmp_path / "no").exists()


def test_a_bundle_for_another_jaxlib_says_so_and_imports_nothing(tmp_path: Path) -> None:
    env = node_env(tmp_path / "home")
    synthetic_cache(tmp_path / "a", 3, tag="v")
    bundle = tmp_path / "v.tar"
    cli_json("--cache-dir", str(tmp_path / "a"), "export", "-o", str(bundle), env=env)
    _write(bundle, _other_version(_members(bundle)))
    plan = cli_json("--cache-dir", str(tmp_path / "t"), "import", str(bundle), env=env)
    assert plan["fetch"] == [] and len(plan["skipped"]) == 3
    assert all("for jaxlib 0.4.1" in s["reason"] for s in plan["skipped"])
    assert not (tmp_path / "t" / f"jaxlib-{JAXLIB}").exists() or not names_in(tmp_path / "t" / f"jaxlib-{JAXLIB}")


def test_export_selects_by_name_and_refuses_nothing_to_export(tmp_path: Path) -> None:
    env = node_env(tmp_path / "home")
    synthetic_cache(tmp_path / "a", 3, tag="keep")
    synthetic_cache(tmp_path / "a", 2, tag="drop")
    bundle = tmp_path / "n.tar"
    out = cli_json("--cache-dir", str(tmp_path / "a"), "export", "-o", str(bundle), "--name", "jit_keep_*", env=env)
    assert out["objects"] == 3
    assert sum(n.startswith("objects/") for n in _members(bundle)) == 3
    proc = cli("--cache-dir", str(tmp_path / "a"), "export", "-o", str(tmp_path / "none.tar"), "--name", "nope*",
               env=env)
    assert proc.returncode == 1 and "nothing to export" in proc.stderr and not (tmp_path / "none.tar").exists()
    proc = cli("--cache-dir", str(tmp_path / "a"), "export", "-o", str(tmp_path / "v.tar"), "--version", "0.0.1",
               env=env)
    assert proc.returncode == 1 and "no entries of jaxlib 0.0.1" in proc.stderr


def test_import_refuses_a_folder_that_is_not_a_cache(tmp_path: Path) -> None:
    env = node_env(tmp_path / "home")
    synthetic_cache(tmp_path / "a", 1, tag="h")
    bundle = tmp_path / "h.tar"
    cli_json("--cache-dir", str(tmp_path / "a"), "export", "-o", str(bundle), env=env)
    home = tmp_path / "a-home-folder"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    proc = cli("--cache-dir", str(home), "import", str(bundle), env=env)
    assert proc.returncode == 1 and "does not look like a JAX cache" in proc.stderr
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]

