"""A bucket as the cache itself (``--cache-dir s3://...``), against a real S3 server (moto's, on 127.0.0.1).

JAX writes and reads the bucket through etils.epath and s3fs in fresh processes
configured by ``jaxcache.configure("s3://...")``; inspect, ls, prune, clear and
check then work on what JAX wrote.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from jaxcache.jaxformat import encode_atime
from jaxcache.settings import resolve
from jaxcache_testing import run_compile
from test_fleet import JAXLIB, cli, cli_json, node_env, synthetic_cache
from test_fleet_s3 import bucket, s3_endpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def _s3():
    import boto3

    return boto3.client("s3")


def _objects(bucket_name: str, prefix: str = "") -> dict[str, bytes]:
    s3 = _s3()
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket_name, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"]] = s3.get_object(Bucket=bucket_name, Key=item["Key"])["Body"].read()
    return out


def _put(bucket_name: str, key: str, data: bytes) -> None:
    _s3().put_object(Bucket=bucket_name, Key=key, Body=data)


@pytest.fixture
def node(bucket: dict[str, str], tmp_path: Path) -> dict[str, str]:  # noqa: F811
    """A node's environment, reaching the bucket the standard way (AWS_* variables)."""
    return node_env(tmp_path, **{k: v for k, v in bucket.items() if k != "BUCKET"})


def _configure(url: str) -> str:
    return f"import jaxcache; jaxcache.configure({url!r})"


@pytest.fixture
def filled(bucket: dict[str, str], node: dict[str, str]) -> str:  # noqa: F811
    """A bucket JAX filled through configure(): returns its URL."""
    url = f"s3://{bucket['BUCKET']}/team/jax"
    first = run_compile(node, configure=_configure(url))
    assert first["misses"] and not first["hits"]
    return url


def test_jax_writes_into_the_bucket_and_a_fresh_process_hits(filled: str, bucket: dict[str, str],  # noqa: F811
                                                              node: dict[str, str]) -> None:
    objects = _objects(bucket["BUCKET"], "team/jax/")
    entries = [k for k in objects if k.endswith("-cache")]
    # Into the marked version folder, with no -atime (no cap) and no local lock folder anywhere.
    assert entries and all(k.startswith(f"team/jax/jaxlib-{JAXLIB}/") for k in entries)
    assert json.loads(objects[f"team/jax/jaxlib-{JAXLIB}/.jaxcache-version.json"])["jaxlib"] == JAXLIB
    assert not [k for k in objects if k.endswith("-atime")]
    second = run_compile(node, configure=_configure(filled))  # a fresh process
    assert second["hits"] and not second["misses"]
    assert set(_objects(bucket["BUCKET"], f"team/jax/jaxlib-{JAXLIB}/")) == {k for k in objects if "jaxlib-" in k}
    # Each process recorded its hits and writes in one object (an object store records no reads).
    uses = [json.loads(v)["uses"][f"jaxlib-{JAXLIB}"] for v in _objects(bucket["BUCKET"], "team/jax/.jaxcache/uses/").values()]
    assert len(uses) == 2 and all(set(u) == {k.rsplit("/", 1)[1][:-6] for k in entries} for u in uses)


def test_inspect_and_ls_describe_what_jax_wrote(filled: str, bucket: dict[str, str], node: dict[str, str]) -> None:  # noqa: F811
    objects = _objects(bucket["BUCKET"], f"team/jax/jaxlib-{JAXLIB}/")
    entries = {k.rsplit("/", 1)[1][:-6]: len(v) for k, v in objects.items() if k.endswith("-cache")}
    summary = cli_json("--cache-dir", filled, "inspect", env=node)
    assert summary["cache_dir"] == filled
    assert summary["entries"] == len(entries) and summary["bytes"] == sum(entries.values())
    assert summary["by_version"][JAXLIB]["entries"] == len(entries)
    listed = cli_json("--cache-dir", filled, "ls", env=node)
    assert {e["key"]: e["bytes"] for e in listed} == entries
    assert all(e["version"] == JAXLIB and e["compile_seconds"] is not None for e in listed)
    assert all(e["path"].startswith(f"{filled}/jaxlib-{JAXLIB}/") for e in listed)
    assert all(e["last_use_recorded"] for e in listed)  # from the use objects
    text = cli("--cache-dir", filled, "ls", "--sort", "size", env=node)
    assert text.returncode == 0 and "jit_step" in text.stdout


def test_prune_stale_deletes_only_other_versions_and_plans_first(filled: str, bucket: dict[str, str],  # noqa: F811
                                                                  node: dict[str, str]) -> None:
    name = bucket["BUCKET"]
    current = _objects(name, f"team/jax/jaxlib-{JAXLIB}/")
    # The same entries under another jaxlib's marked folder (as an upgrade leaves them).
    other = "0.6.1" if JAXLIB != "0.6.1" else "0.10.2"
    for key, data in current.items():
        old = key.replace(f"jaxlib-{JAXLIB}/", f"jaxlib-{other}/")
        _put(name, old, data.replace(JAXLIB.encode(), other.encode()) if key.endswith(".json") else data)
    before = _objects(name)
    dry = cli_json("--cache-dir", filled, "prune", "--stale", "--dry-run", env=node)
    stale = {k.rsplit("/", 1)[1][:-6] for k in before if f"jaxlib-{other}/" in k and k.endswith("-cache")}
    assert set(dry["deleted"]) == stale and dry["dry_run"]
    assert _objects(name) == before
    refused = cli("--cache-dir", filled, "prune", "--stale", env=node)  # no terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr and _objects(name) == before
    done = cli_json("--cache-dir", filled, "prune", "--stale", "--yes", env=node)
    assert set(done["deleted"]) == stale and not done["skipped"]
    after = _objects(name)
    assert {k for k in after if k.endswith("-cache")} == {k for k in current if k.endswith("-cache")}
    assert run_compile(node, configure=_configure(filled))["misses"] == []


def test_prune_older_than_follows_recorded_uses_on_both_sides_of_the_cutoff(
        filled: str, bucket: dict[str, str], node: dict[str, str]) -> None:  # noqa: F811
    name = bucket["BUCKET"]
    folder = f"team/jax/jaxlib-{JAXLIB}"
    keys = sorted(k.rsplit("/", 1)[1][:-6] for k in _objects(name, folder + "/") if k.endswith("-cache"))
    now = time.time()
    # One use record per entry, spread around the 1 h cutoff (later records win over earlier ones).
    offsets = [3600 + d for d in (-600, -60, 60, 600, 86400)][: len(keys)] + [10] * max(0, len(keys) - 5)
    _put(name, "team/jax/.jaxcache/uses/0-old.json", json.dumps({"uses": {f"jaxlib-{JAXLIB}": {
        k: now - off for k, off in zip(keys, offsets)}}}).encode())
    # Uses recorded by the processes that filled the bucket are newer: drop them for this test.
    for key in _objects(name, "team/jax/.jaxcache/uses/"):
        if not key.endswith("0-old.json"):
            _s3().delete_object(Bucket=name, Key=key)
    plan = cli_json("--cache-dir", filled, "prune", "--older-than", "1h", "--dry-run", env=node)
    expected = {k for k, off in zip(keys, offsets) if off > 3600}  # a minute from the cutoff either way
    assert set(plan["deleted"]) == expected
    done = cli_json("--cache-dir", filled, "prune", "--older-than", "1h", "--yes", env=node)
    assert set(done["deleted"]) == expected
    # The use objects were folded into one, which no longer names the deleted entries.
    uses = _objects(name, "team/jax/.jaxcache/uses/")
    assert len(uses) == 1
    recorded = json.loads(next(iter(uses.values())))["uses"][f"jaxlib-{JAXLIB}"]
    assert set(recorded) == set(keys) - expected


def test_an_entry_without_recorded_use_is_never_pruned_by_age(filled: str, bucket: dict[str, str],  # noqa: F811
                                                              node: dict[str, str]) -> None:
    name = bucket["BUCKET"]
    for key in _objects(name, "team/jax/.jaxcache/uses/"):
        _s3().delete_object(Bucket=name, Key=key)
    before = _objects(name)
    kept = cli_json("--cache-dir", filled, "prune", "--older-than", "30d", "--yes", env=node)
    assert kept["deleted"] == [] and _objects(name) == before  # written seconds ago: none can be older
    time.sleep(2)
    refused = cli("--cache-dir", filled, "prune", "--older-than", "1s", "--yes", env=node)
    assert refused.returncode == 2 and "records a read" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert _objects(name) == before


def test_clear_deletes_only_what_it_proves_a_cache_entry(filled: str, bucket: dict[str, str],  # noqa: F811
                                                          node: dict[str, str]) -> None:
    name = bucket["BUCKET"]
    folder = f"team/jax/jaxlib-{JAXLIB}"
    impostor = f"{folder}/jit_mine-{'ab' * 32}-cache"
    _put(name, impostor, b"my notes, not a JAX entry")
    _put(name, f"{folder}/notes.txt", b"keep me")
    dry = cli_json("--cache-dir", filled, "clear", "--dry-run", env=node)
    assert dry["dry_run"] and _objects(name, impostor)
    done = cli_json("--cache-dir", filled, "clear", "--yes", env=node)
    assert {s["key"] for s in done["skipped"]} == {f"jit_mine-{'ab' * 32}"}
    left = _objects(name, folder + "/")
    assert set(left) == {impostor, f"{folder}/notes.txt", f"{folder}/.jaxcache-version.json"}
    assert cli_json("--cache-dir", filled, "inspect", env=node)["entries"] == 1


def test_check_finds_and_repairs_broken_objects(filled: str, bucket: dict[str, str], node: dict[str, str]) -> None:  # noqa: F811
    name = bucket["BUCKET"]
    folder = f"team/jax/jaxlib-{JAXLIB}"
    entries = sorted(k for k in _objects(name, folder + "/") if k.endswith("-cache"))
    assert cli("--cache-dir", filled, "check", env=node).returncode == 0
    whole = _objects(name, entries[0])[entries[0]]
    truncated = f"{folder}/jit_cut-{'cd' * 32}-cache"
    foreign = f"{folder}/jit_foreign-{'ef' * 32}-cache"
    orphan = f"{folder}/jit_gone-{'12' * 32}-atime"
    _put(name, truncated, whole[: len(whole) // 2])
    _put(name, foreign, b"not compressed at all")
    _put(name, orphan, encode_atime(time.time_ns()))
    # Checked at once: a PUT is whole or absent, so a broken object is no write in progress.
    report = cli_json("--cache-dir", filled, "check", env=node, code=1)
    kinds = {(f["kind"], f["path"].rsplit("/", 1)[1]) for f in report["findings"]}
    assert kinds == {("corrupt", truncated.rsplit("/", 1)[1]), ("corrupt", foreign.rsplit("/", 1)[1]),
                     ("orphan-atime", orphan.rsplit("/", 1)[1])}
    before = _objects(name)
    dry = cli_json("--cache-dir", filled, "check", "--repair", "--dry-run", env=node, code=1)
    assert {r["action"] for r in dry["repair_plan"]} == {"delete", "quarantine"} and _objects(name) == before
    fixed = cli_json("--cache-dir", filled, "check", "--repair", "--yes", env=node)
    assert fixed["ok"]
    after = _objects(name)
    assert truncated not in after and orphan not in after and foreign not in after
    assert after[foreign + ".quarantined"] == b"not compressed at all"  # moved aside, never deleted
    assert all(e in after for e in entries)
    assert cli("--cache-dir", filled, "check", env=node).returncode == 0


def test_refusals_are_one_line_and_change_nothing(bucket: dict[str, str], node: dict[str, str]) -> None:  # noqa: F811
    name = bucket["BUCKET"]
    _put(name, "docs/readme.txt", b"not a cache")

    def refused(code: str) -> str:
        from jaxcache_testing import run_python

        proc = run_python(code, env=node, check=False)
        assert proc.returncode != 0
        return proc.stderr.strip().splitlines()[-1]

    assert "not empty and does not look like a JAX cache" in refused(_configure(f"s3://{name}/docs"))
    assert "refusing max_size" in refused(f"import jaxcache; jaxcache.configure('s3://{name}/c', max_size='1GB')")
    assert _objects(name) == {"docs/readme.txt": b"not a cache"}
    for args, words in [(("--cache-dir", f"s3://{name}/docs", "inspect"), "does not look like a JAX"),
                        (("--cache-dir", f"s3://no-such-{uuid.uuid4().hex[:8]}/x", "ls"), "no bucket"),
                        (("--cache-dir", f"s3://{name}/c", "run", "--", "true"), "needs a local folder"),
                        (("--cache-dir", "ftp://host/x", "inspect"), "unsupported cache URL")]:
        proc = cli(*args, env=node)
        assert proc.returncode != 0 and words in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert _objects(name) == {"docs/readme.txt": b"not a cache"}


def test_a_cap_meant_for_local_caches_is_left_out_with_a_warning(bucket: dict[str, str],  # noqa: F811
                                                                  node: dict[str, str]) -> None:
    from jaxcache_testing import run_python

    url = f"s3://{bucket['BUCKET']}/capped"
    env = {**node, "JAXCACHE_MAX_SIZE": "1GB"}
    proc = run_python(f"{_configure(url)}\nimport jax\nprint('CAP', jax.config.jax_compilation_cache_max_size)",
                      env=env)
    assert "CAP -1" in proc.stdout
    assert "max_size from env JAXCACHE_MAX_SIZE is not applied" in proc.stderr
    shown = cli_json("--cache-dir", url, "config", env=env)
    assert shown["jax_options"]["jax_compilation_cache_max_size"] == -1


def test_a_cache_and_a_fleet_remote_are_never_mixed_up(filled: str, bucket: dict[str, str],  # noqa: F811
                                                        node: dict[str, str], tmp_path: Path) -> None:
    name = bucket["BUCKET"]
    synthetic_cache(tmp_path / "local", 3, tag="m")
    before = _objects(name)
    for verb in ("push", "pull"):  # into, or out of, the bucket JAX uses as its cache
        proc = cli("--cache-dir", str(tmp_path / "local"), verb, filled, env=node)
        assert proc.returncode == 2 and "is a JAX cache, not a fleet remote" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert _objects(name) == before
    fleet = f"s3://{name}/fleet"
    assert cli("--cache-dir", str(tmp_path / "local"), "push", fleet, env=node).returncode == 0
    from jaxcache_testing import run_python

    proc = run_python(_configure(fleet), env=node, check=False)
    assert proc.returncode != 0 and "is a fleet remote" in proc.stderr.strip().splitlines()[-1]
    assert not [k for k in _objects(name, "fleet/") if k.endswith(".jaxcache-version.json")]


def test_a_url_with_one_slash_is_refused_not_taken_for_a_folder(node: dict[str, str], tmp_path: Path) -> None:
    synthetic_cache(tmp_path / "local", 1, tag="t")
    for args in (("--cache-dir", "s3:/bucket/x", "inspect"), ("--cache-dir", str(tmp_path / "local"), "push", "s3:/b/x"),
                 ("--cache-dir", str(tmp_path / "local"), "pull", "gs:/b/x")):
        proc = cli(*args, env=node, cwd=tmp_path)
        assert proc.returncode == 2 and "did you mean" in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "gs:").exists()


def test_an_unreachable_store_is_not_called_a_missing_bucket(node: dict[str, str]) -> None:
    from jaxcache_testing import free_port

    port = free_port()  # nobody listens on it
    proc = cli("--cache-dir", "s3://somebucket/x", "ls", env={**node, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                                                               "AWS_MAX_ATTEMPTS": "1"})
    assert proc.returncode == 1 and "Could not connect" in proc.stderr and "no bucket" not in proc.stderr


def test_a_fleet_remote_is_not_taken_for_a_cache(bucket: dict[str, str], node: dict[str, str]) -> None:  # noqa: F811
    name = bucket["BUCKET"]
    _put(name, f"fleet/jaxlib-{JAXLIB}/objects/{'0' * 64}", b"x")
    proc = cli("--cache-dir", f"s3://{name}/fleet", "clear", "--yes", env=node)
    assert proc.returncode != 0 and "fleet remote" in proc.stderr
    assert _objects(name) == {f"fleet/jaxlib-{JAXLIB}/objects/{'0' * 64}": b"x"}


@pytest.mark.parametrize("given, expected", [
    ("s3://bucket/a/b/", "s3://bucket/a/b"), ("S3://bucket//a", "s3://bucket/a"), ("gcs://b/p", "gs://b/p"),
    ("gs://b", "gs://b")])
def test_object_store_urls_are_normalized(given: str, expected: str) -> None:
    settings = resolve(cache_dir=given, env={})
    assert settings.url == expected and settings.cache_dir.value == expected


def test_file_urls_are_local_folders(tmp_path: Path) -> None:
    settings = resolve(cache_dir=f"file://{tmp_path}", env={})
    assert settings.url is None and settings.root == tmp_path.resolve()


def test_pytest_plugin_with_a_bucket(bucket: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    import textwrap

    from test_pytest_plugin import SUITE, _pytest

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_model.py").write_text(textwrap.dedent(SUITE))
    url = f"s3://{bucket['BUCKET']}/ci"
    first, (requests, hits, misses, writes) = _pytest(suite, "-n", "2", f"--jaxcache={url}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert misses > 0 and writes > 0 and f"persistent compilation cache {url}/jaxlib-{JAXLIB}" in first.stdout
    second, (requests2, hits2, misses2, _) = _pytest(suite, "-n", "2", f"--jaxcache={url}")
    assert second.returncode == 0, second.stdout + second.stderr
    assert requests2 == requests and misses2 == 0 and hits2 == requests2
    assert not (suite / "s3:").exists()  # no local lock folder, no local logs


def test_each_bucket_configured_in_one_process_gets_its_own_uses(bucket: dict[str, str],  # noqa: F811
                                                                 node: dict[str, str]) -> None:
    from jaxcache_testing import run_python

    name = bucket["BUCKET"]
    run_python(f"""
        import warnings, jaxcache, jax, jax.numpy as jnp
        jaxcache.configure("s3://{name}/one")
        jax.jit(lambda x: x * 2)(jnp.ones(3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "switching to ... from now on"
            jaxcache.configure("s3://{name}/two")
        jax.jit(lambda x: x * 3 + 1)(jnp.ones(4))
    """, env=node)
    for prefix in ("one", "two"):
        written = {k.rsplit("/", 1)[1][:-6] for k in _objects(name, f"{prefix}/jaxlib-{JAXLIB}/") if k.endswith("-cache")}
        uses = [json.loads(v)["uses"] for v in _objects(name, f"{prefix}/.jaxcache/uses/").values()]
        assert written and len(uses) == 1 and set(uses[0][f"jaxlib-{JAXLIB}"]) == written, prefix


def test_names_with_glob_characters_are_taken_literally(filled: str, bucket: dict[str, str],  # noqa: F811
                                                        node: dict[str, str]) -> None:
    """fsspec's rm and cat of a list expand * ? [ ]: `jit_a[b]-...` would name `jit_ab-...`."""
    import zlib

    name = bucket["BUCKET"]
    folder = f"team/jax/jaxlib-{JAXLIB}"
    digest = "ab" * 32
    _put(name, f"{folder}/jit_a[b]-{digest}-cache", zlib.compress(b"\0\0\0\1" + b"x" * 100))
    _put(name, f"{folder}/jit_ab-{digest}-cache", b"my notes")
    done = cli_json("--cache-dir", filled, "clear", "--yes", env=node)
    assert f"jit_a[b]-{digest}" in done["deleted"] and f"jit_ab-{digest}" not in done["deleted"]
    left = _objects(name, folder + "/")
    assert left.get(f"{folder}/jit_ab-{digest}-cache") == b"my notes" and f"{folder}/jit_a[b]-{digest}-cache" not in left


def test_check_ignores_a_cap_meant_for_local_caches(filled: str, node: dict[str, str]) -> None:
    report = cli_json("--cache-dir", filled, "check", env={**node, "JAXCACHE_MAX_SIZE": "1GB"})
    assert report["ok"] and report["findings"] == []  # configure() never caps a bucket: no -atime is missing


def test_folder_placeholders_and_unreadable_use_objects(bucket: dict[str, str], node: dict[str, str]) -> None:  # noqa: F811
    name = bucket["BUCKET"]
    _put(name, "console/", b"")  # what a console's "Create folder" leaves
    url = f"s3://{name}/console"
    assert run_compile(node, configure=_configure(url))["misses"]
    assert cli_json("--cache-dir", url, "inspect", env=node)["entries"] > 0
    _put(name, "console/.jaxcache/uses/v2-format.json", b'{"version": 2, "records": []}')
    cli_json("--cache-dir", url, "prune", "--name", "jit_cost*", "--yes", env=node)
    uses = _objects(name, "console/.jaxcache/uses/")
    assert "console/.jaxcache/uses/v2-format.json" in uses and len(uses) == 2  # unread: kept; the rest folded


def test_a_url_from_a_variable_and_a_version_folder_as_the_root(bucket: dict[str, str], node: dict[str, str]) -> None:  # noqa: F811
    from jaxcache_testing import run_python

    name = bucket["BUCKET"]
    env = {**node, "MYBUCKET": f"s3://{name}", "JAXCACHE_DIR": "$MYBUCKET/team"}
    assert cli("dir", env=env).stdout.strip() == f"s3://{name}/team"
    assert run_compile(env, configure="import jaxcache; jaxcache.configure()")["misses"]
    version = f"s3://{name}/team/jaxlib-{JAXLIB}"
    proc = run_python(f"import jaxcache; print('DIR', jaxcache.configure({version!r}).jax_dir)", env=node)
    assert f"DIR {version}\n" in proc.stdout  # used as it is, not nested
    assert not [k for k in _objects(name, f"team/jaxlib-{JAXLIB}/jaxlib-")]


def test_uses_are_written_while_a_process_runs_not_only_at_its_exit(bucket: dict[str, str],  # noqa: F811
                                                                    node: dict[str, str]) -> None:
    from jaxcache_testing import run_python

    name = bucket["BUCKET"]
    proc = run_python(f"""
        import os, signal, time, jaxcache, jax, jax.numpy as jnp
        from jaxcache.bucket import UseRecorder
        UseRecorder.FLUSH_EVERY_SECS = 0.0  # a long job's periodic flush, at once
        jaxcache.configure("s3://{name}/long")
        jax.jit(lambda x: x * 2)(jnp.ones(3))
        time.sleep(2)  # the flush runs on its own thread
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit
    """, env=node, check=False)
    assert proc.returncode == -9
    assert _objects(name, "long/.jaxcache/uses/")
