"""The fleet on ``gs://``, against a real GCS emulator (gcp-storage-emulator, on 127.0.0.1).

Every node is a fresh process reaching the emulator through environment variables that
gcsfs and fsspec read: ``STORAGE_EMULATOR_HOST``, no credentials (fsspec's
``FSSPEC_GCS_TOKEN=anon``), and gcsfs's plain JSON-API client
(``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: the default client also asks a gRPC
control plane, which no emulator serves, about the bucket before every request).
The tests create buckets, list and tamper with objects through the emulator's JSON API
with urllib, not gcsfs: what they check is not read back through the code under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jaxcache_testing import free_port
from test_fleet import (
    JAXLIB,
    cli,
    cli_json,
    compiled_no_solver_kernel,
    concurrent_pushers,
    names_in,
    node_env,
    solve_counts,
    synthetic_cache,
    warmed,  # noqa: F401 (a fixture)
    warmed_once,  # noqa: F401 (a fixture)
)


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real GCS emulator (gcp-storage-emulator, in memory) in its own process for this test process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                   "--port", str(port), "--in-memory", "--quiet"], stdout=out, stderr=out,
                                  cwd=log.parent)
    try:
        deadline = time.monotonic() + 60
        while True:  # its health check answers once it listens
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as reply:
                    if reply.read() == b"OK":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the GCS emulator did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _api(endpoint: str, method: str, path: str, body: bytes | None = None,
         content_type: str = "application/json") -> dict:
    """One call to the emulator's JSON API (the oracle: independent of gcsfs)."""
    request = urllib.request.Request(endpoint + path, data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read()
    return json.loads(text) if text else {}


def _objects(endpoint: str, bucket: str, prefix: str) -> dict[str, int]:
    """Name and size of every object under ``prefix`` (following pages)."""
    found: dict[str, int] = {}
    token = ""
    while True:
        query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
        page = _api(endpoint, "GET", f"/storage/v1/b/{bucket}/o?{query}")
        found.update({item["name"]: int(item["size"]) for item in page.get("items", [])})
        token = page.get("nextPageToken", "")
        if not token:
            return found


def _put_object(endpoint: str, bucket: str, name: str, data: bytes) -> None:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    _api(endpoint, "POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")


@pytest.fixture
def bucket(gcs_endpoint: str) -> tuple[str, dict[str, str]]:
    """A fresh bucket, and the environment a node needs to reach it."""
    name = f"fleet-{uuid.uuid4().hex[:12]}"
    _api(gcs_endpoint, "POST", "/storage/v1/b?project=test", json.dumps({"name": name}).encode())
    env = {"STORAGE_EMULATOR_HOST": gcs_endpoint, "FSSPEC_GCS_TOKEN": "anon",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    return name, env


def test_push_then_pull_through_gcs(bucket: tuple[str, dict[str, str]], gcs_endpoint: str, tmp_path: Path) -> None:
    """Node A pushes; node B, an empty folder, pulls every object; B's second pull transfers
    nothing and costs one read."""
    name, gcs = bucket
    url = f"gs://{name}/team/jax"
    source = synthetic_cache(tmp_path / "a", 40, tag="g")
    node_a = node_env(tmp_path / "home-a", **gcs)
    pushed = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, env=node_a)
    assert pushed["ok"] and pushed["manifest"] and pushed["transferred"]["done"] == len(pushed["send"]) == 40

    # What the emulator holds: each entry under the SHA-256 of its bytes, a manifest, HEAD.
    stored = _objects(gcs_endpoint, name, f"team/jax/jaxlib-{JAXLIB}/")
    shas = {hashlib.sha256((source / n).read_bytes()).hexdigest(): (source / n).stat().st_size
            for n in names_in(source)}
    assert {k.rsplit("/", 1)[1]: v for k, v in stored.items() if "/objects/" in k} == shas
    assert f"team/jax/jaxlib-{JAXLIB}/HEAD.json" in stored
    assert len([k for k in stored if "/manifests/" in k]) == 1

    node_b = node_env(tmp_path / "home-b", **gcs)
    cache_b = tmp_path / "node-b" / "cache"
    pulled = cli_json("--cache-dir", str(cache_b), "pull", url, env=node_b)
    assert pulled["ok"] and pulled["skipped"] == [] and len(pulled["fetch"]) == 40
    folder = cache_b / f"jaxlib-{JAXLIB}"
    assert names_in(folder) == names_in(source)
    assert all((folder / n).read_bytes() == (source / n).read_bytes() for n in names_in(source))

    again = cli_json("--cache-dir", str(cache_b), "pull", url, env=node_b)
    assert again["fetch"] == [] and again["remote_manifests"]["reads"] == 1 and again["here"] == 40
    # And a second push sends nothing: every object is already there.
    assert cli_json("--cache-dir", str(tmp_path / "a"), "push", url, env=node_a)["send"] == []


def test_one_warm_serves_another_node_through_gcs(warmed: Path, bucket: tuple[str, dict[str, str]],  # noqa: F811
                                                  tmp_path: Path) -> None:
    """Node A (warmed by real JAX) pushes; node B's solve, after a pull into an empty folder,
    compiles no solver kernel."""
    name, gcs = bucket
    url = f"gs://{name}/warm"
    pushed = cli_json("--cache-dir", str(warmed), "push", url, env=node_env(tmp_path / "home-a", **gcs))
    assert pushed["ok"] and pushed["transferred"]["done"] == len(pushed["send"]) > 0

    node_b = node_env(tmp_path / "home-b", **gcs)
    cache_b = tmp_path / "node-b" / "cache"
    pulled = cli_json("--cache-dir", str(cache_b), "pull", url, env=node_b)
    assert pulled["ok"] and pulled["skipped"] == [] and len(pulled["fetch"]) == len(pushed["send"])
    assert compiled_no_solver_kernel(solve_counts(cache_b, node_b))


def test_a_tampered_object_is_refused(bucket: tuple[str, dict[str, str]], gcs_endpoint: str,
                                      tmp_path: Path) -> None:
    name, gcs = bucket
    url = f"gs://{name}/tamper"
    env = node_env(tmp_path / "home", **gcs)
    source = synthetic_cache(tmp_path / "a", 5, tag="t")
    pushed = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, env=env)
    victim = sorted(names_in(source))[2]
    original = (source / victim).read_bytes()
    key = f"tamper/jaxlib-{JAXLIB}/objects/{hashlib.sha256(original).hexdigest()}"
    _put_object(gcs_endpoint, name, key, b"\x78\x9c" + os.urandom(len(original) - 2))  # same size, other bytes
    assert _objects(gcs_endpoint, name, key) == {key: len(original)}

    proc = cli("--cache-dir", str(tmp_path / "node"), "pull", url, "-q", env=env)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert victim in proc.stderr and "refused" in proc.stderr
    folder = tmp_path / "node" / f"jaxlib-{JAXLIB}"
    assert names_in(folder) == names_in(source) - {victim} and len(pushed["send"]) == 5
    assert not [p for p in folder.iterdir() if p.name.startswith(".jaxcache-tmp-")]


def test_a_missing_bucket_is_one_line(bucket: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """A missing bucket is an error; an empty prefix of an existing one just holds nothing."""
    name, gcs = bucket
    env = node_env(tmp_path / "home", **gcs)
    synthetic_cache(tmp_path / "a", 1, tag="e")
    empty = cli_json("--cache-dir", str(tmp_path / "b"), "pull", f"gs://{name}/nothing-yet", env=env)
    assert empty["fetch"] == [] and empty["here"] == 0
    missing = f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/x"
    for command in ("push", "pull"):
        proc = cli("--cache-dir", str(tmp_path / "a"), command, missing, env=env)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "no-such-bucket" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_pushers_at_once_lose_nothing_on_gcs(bucket: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    name, gcs = bucket
    url = f"gs://{name}/race"
    env = node_env(tmp_path / "home", **gcs)
    expected = concurrent_pushers(tmp_path, url, env)
    node = tmp_path / "node"
    pulled = cli_json("--cache-dir", str(node), "pull", url, env=env)
    assert pulled["ok"] and names_in(node / f"jaxlib-{JAXLIB}") == expected


def test_a_gcs_bucket_as_the_cache_itself(bucket: tuple[str, dict[str, str]], gcs_endpoint: str,
                                          tmp_path: Path) -> None:
    """JAX writes into gs:// through configure() (etils.epath, then gcsfs); a fresh process hits;
    inspect, check and clear work on what it wrote (jaxcache.bucket)."""
    from jaxcache_testing import run_compile

    name, gcs = bucket
    url = f"gs://{name}/cache"
    node = node_env(tmp_path / "home", **gcs)
    configure = f"import jaxcache; jaxcache.configure({url!r})"
    first = run_compile(node, configure=configure)
    assert first["misses"] and not first["hits"]
    stored = _objects(gcs_endpoint, name, f"cache/jaxlib-{JAXLIB}/")
    entries = {k.rsplit("/", 1)[1][:-6]: size for k, size in stored.items() if k.endswith("-cache")}
    assert entries
    second = run_compile(node, configure=configure)
    assert second["hits"] and not second["misses"]
    summary = cli_json("--cache-dir", url, "inspect", env=node)
    assert summary["entries"] == len(entries) and summary["bytes"] == sum(entries.values())
    assert cli("--cache-dir", url, "check", env=node).returncode == 0
    cleared = cli_json("--cache-dir", url, "clear", "--yes", env=node)
    assert set(cleared["deleted"]) == set(entries)
    assert not [k for k in _objects(gcs_endpoint, name, "cache/") if k.endswith("-cache")]
