"""One warm serves a fleet, against a real S3 server (moto's, on 127.0.0.1) and a shared folder.

Every node is a fresh process with its own cache folder and environment; the
server is started by the fixture below on a random free port, and reached
the standard way (``AWS_ENDPOINT_URL``, ``AWS_*`` credentials).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
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
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) for this test process."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket; returns the S3 environment a node needs to reach it (also set in this process)."""
    import boto3

    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    name = f"fleet-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return {**env, "BUCKET": name}


def _s3(bucket: dict[str, str]):
    import boto3

    return boto3.client("s3")


@pytest.fixture(params=["s3", "folder"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A remote and the environment its nodes need: S3, or a folder every node mounts."""
    if request.param == "folder":
        return str(tmp_path / "shared" / "jax-fleet"), {}
    env = request.getfixturevalue("bucket")
    return f"s3://{env['BUCKET']}/team/jax", {k: v for k, v in env.items() if k != "BUCKET"}


def test_one_warm_serves_another_node(warmed: Path, remote: tuple[str, dict[str, str]],  # noqa: F811
                                      tmp_path: Path) -> None:
    """Node A (warmed) pushes; node B, an empty folder, pulls and its solve compiles no solver
    kernel; B's second pull transfers nothing and costs one read. (The control that the same
    solve does compile in an empty folder: test_warm.py::test_without_warming_the_same_solve_misses.)"""
    url, extra = remote
    node_a = node_env(tmp_path / "home-a", **extra)
    pushed = cli_json("--cache-dir", str(warmed), "push", url, env=node_a)
    assert pushed["ok"] and pushed["manifest"] and pushed["transferred"]["done"] == len(pushed["send"]) > 0

    node_b = node_env(tmp_path / "home-b", **extra)
    cache_b = tmp_path / "node-b" / "cache"
    pulled = cli_json("--cache-dir", str(cache_b), "pull", url, env=node_b)
    assert pulled["ok"] and pulled["skipped"] == [] and len(pulled["fetch"]) == len(pushed["send"])
    assert compiled_no_solver_kernel(solve_counts(cache_b, node_b))

    again = cli_json("--cache-dir", str(cache_b), "pull", url, env=node_b)
    assert again["fetch"] == []
    assert again["remote_manifests"]["reads"] == 1 and again["here"] == len(pulled["fetch"])

    # JAX's own entries alone (the executable store off) hit too: their keys hold no folder path.
    node_c = node_env(tmp_path / "home-c", JAXCACHE_EXECUTABLES="0", **extra)
    cache_c = tmp_path / "node-c" / "elsewhere" / "cache"
    cli_json("--cache-dir", str(cache_c), "pull", url, env=node_c)
    assert compiled_no_solver_kernel(solve_counts(cache_c, node_c))


@pytest.mark.slow
def test_two_pushers_at_once_lose_nothing_on_s3(bucket: dict[str, str], tmp_path: Path) -> None:
    url = f"s3://{bucket['BUCKET']}/race"
    env = node_env(tmp_path / "home", **{k: v for k, v in bucket.items() if k != "BUCKET"})
    expected = concurrent_pushers(tmp_path, url, env)
    node = tmp_path / "node"
    pulled = cli_json("--cache-dir", str(node), "pull", url, env=env)
    assert pulled["ok"] and names_in(node / f"jaxlib-{JAXLIB}") == expected


def _entry_files(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names_in(folder)}


@pytest.mark.slow
def test_a_pull_killed_by_sigkill_leaves_nothing_partial(bucket: dict[str, str], tmp_path: Path) -> None:
    url = f"s3://{bucket['BUCKET']}/kill"
    env = node_env(tmp_path / "home", **{k: v for k, v in bucket.items() if k != "BUCKET"})
    source = synthetic_cache(tmp_path / "a", 200, tag="k", size=40_000)
    assert cli("--cache-dir", str(tmp_path / "a"), "push", url, "-q", env=env).returncode == 0
    expected = _entry_files(source)

    node = tmp_path / "node"
    folder = node / f"jaxlib-{JAXLIB}"
    proc = subprocess.Popen([sys.executable, "-m", "jaxcache", "--cache-dir", str(node), "pull", url, "--jobs", "1",
                             "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and len(names_in(folder)) >= 20:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    had = _entry_files(folder)
    # Killed mid-way, not by luck after the end: some objects in, most not.
    assert proc.returncode == -signal.SIGKILL and 20 <= len(had) < len(expected)
    assert all(data == expected[name] for name, data in had.items())  # nothing partial under an entry's name

    rerun = cli_json("--cache-dir", str(node), "pull", url, env=env)
    assert rerun["ok"] and len(rerun["fetch"]) == len(expected) - len(had)
    assert _entry_files(folder) == expected
    assert not [p for p in folder.iterdir() if p.name.startswith(".jaxcache-tmp-")]  # the dead pull's temps removed


def test_a_tampered_object_is_refused(bucket: dict[str, str], tmp_path: Path) -> None:
    url = f"s3://{bucket['BUCKET']}/tamper"
    env = node_env(tmp_path / "home", **{k: v for k, v in bucket.items() if k != "BUCKET"})
    source = synthetic_cache(tmp_path / "a", 5, tag="t")
    pushed = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, env=env)
    victim = sorted(names_in(source))[2]
    sha = __import__("hashlib").sha256((source / victim).read_bytes()).hexdigest()
    _s3(bucket).put_object(Bucket=bucket["BUCKET"], Key=f"tamper/jaxlib-{JAXLIB}/objects/{sha}",
                           Body=b"\x78\x9c" + os.urandom(len((source / victim).read_bytes()) - 2))
    proc = cli("--cache-dir", str(tmp_path / "node"), "pull", url, "-q", env=env)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert victim in proc.stderr and "refused" in proc.stderr
    folder = tmp_path / "node" / f"jaxlib-{JAXLIB}"
    assert names_in(folder) == names_in(source) - {victim} and len(pushed["send"]) == 5
    assert not [p for p in folder.iterdir() if p.name.startswith(".jaxcache-tmp-")]


def test_signed_manifests(bucket: dict[str, str], tmp_path: Path) -> None:
    """CI signs; a node with the same key pulls; one with another key, or strict without a
    signature, is refused in one line and pulls nothing."""
    url = f"s3://{bucket['BUCKET']}/signed"
    s3env = {k: v for k, v in bucket.items() if k != "BUCKET"}
    key_file = tmp_path / "fleet.key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    ci = node_env(tmp_path / "home-ci", JAXCACHE_FLEET_KEY_FILE=str(key_file), **s3env)
    synthetic_cache(tmp_path / "ci", 3, tag="s")
    pushed = cli_json("--cache-dir", str(tmp_path / "ci"), "push", url, env=ci)
    assert pushed["ok"]

    good = node_env(tmp_path / "home-good", JAXCACHE_FLEET_KEY="0123456789abcdef0123456789abcdef", **s3env)
    pulled = cli_json("--cache-dir", str(tmp_path / "good"), "pull", url, "--strict", env=good)
    assert pulled["ok"] and len(pulled["fetch"]) == 3 and pulled["remote_manifests"]["signed"]

    other = node_env(tmp_path / "home-other", JAXCACHE_FLEET_KEY="another key, 32 bytes long......", **s3env)
    proc = cli("--cache-dir", str(tmp_path / "other"), "pull", url, env=other)
    assert proc.returncode == 1 and "signed with another key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists() or not names_in(tmp_path / "other" / f"jaxlib-{JAXLIB}")

    unsigned_url = f"s3://{bucket['BUCKET']}/unsigned"
    plain = node_env(tmp_path / "home-plain", **s3env)
    cli_json("--cache-dir", str(tmp_path / "ci"), "push", unsigned_url, env=plain)
    strict = node_env(tmp_path / "home-strict", JAXCACHE_STRICT="1", **s3env)
    proc = cli("--cache-dir", str(tmp_path / "strict"), "pull", unsigned_url, env=strict)
    assert proc.returncode == 1 and "strict mode" in proc.stderr
    assert not (tmp_path / "strict").exists() or not names_in(tmp_path / "strict" / f"jaxlib-{JAXLIB}")


def test_remote_errors_are_one_line(bucket: dict[str, str], tmp_path: Path) -> None:
    env = node_env(tmp_path / "home", **{k: v for k, v in bucket.items() if k != "BUCKET"})
    synthetic_cache(tmp_path / "a", 1, tag="e")
    missing = cli("--cache-dir", str(tmp_path / "a"), "push", "s3://no-such-bucket-here/x", env=env)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    no_creds = node_env(tmp_path / "home2", AWS_ENDPOINT_URL=bucket["AWS_ENDPOINT_URL"],
                        AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                        AWS_EC2_METADATA_DISABLED="true")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        no_creds.pop(var, None)
    proc = cli("--cache-dir", str(tmp_path / "a"), "pull", f"s3://{bucket['BUCKET']}/x", env=no_creds)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    bad = cli("--cache-dir", str(tmp_path / "a"), "pull", "ftp://host/x", env=env)
    assert bad.returncode == 2 and "unsupported remote" in bad.stderr


@pytest.mark.slow
def test_a_push_killed_midway_resumes_without_sending_twice(bucket: dict[str, str], tmp_path: Path) -> None:
    url = f"s3://{bucket['BUCKET']}/resume"
    env = node_env(tmp_path / "home", **{k: v for k, v in bucket.items() if k != "BUCKET"})
    source = synthetic_cache(tmp_path / "a", 200, tag="r", size=40_000)
    proc = subprocess.Popen([sys.executable, "-m", "jaxcache", "--cache-dir", str(tmp_path / "a"), "push", url,
                             "--jobs", "1", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    objects = f"resume/jaxlib-{JAXLIB}/objects/"

    def uploaded() -> int:
        listing = _s3(bucket).list_objects_v2(Bucket=bucket["BUCKET"], Prefix=objects)
        return listing.get("KeyCount", 0)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and uploaded() < 20:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sent = uploaded()
    assert proc.returncode == -signal.SIGKILL and 20 <= sent < 200
    # No manifest yet: a reader sees nothing, never a name without its object.
    assert cli_json("--cache-dir", str(tmp_path / "early"), "pull", url, env=env)["fetch"] == []
    plan = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, "--dry-run", env=env)
    assert len(plan["send"]) == 200 and plan["bytes"] < sum(p.stat().st_size for p in source.glob("*-cache"))
    done = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, env=env)
    assert done["ok"] and done["transferred"]["done"] == 200
    assert uploaded() == 200
    pulled = cli_json("--cache-dir", str(tmp_path / "node"), "pull", url, env=env)
    assert pulled["ok"] and names_in(tmp_path / "node" / f"jaxlib-{JAXLIB}") == names_in(source)


# ---------------------------------------------------------------- damaged objects, healed by a push

class _Remote:
    """A remote's files, read and damaged behind jaxcache's back (as a lifecycle rule, a stray
    writer or a failing disk would), by the store's own means: boto3 for S3, plain files for a folder."""

    def __init__(self, url: str) -> None:
        if url.startswith("s3://"):
            self.bucket, _, self.prefix = url[len("s3://"):].partition("/")
        else:
            self.bucket, self.root = None, Path(url)

    def _key(self, sha: str) -> str:
        return f"jaxlib-{JAXLIB}/objects/{sha}"

    def files(self) -> dict[str, bytes]:
        """Every file of the remote (objects, manifests, HEAD), by name."""
        if self.bucket is None:
            return {str(p.relative_to(self.root)): p.read_bytes() for p in self.root.rglob("*") if p.is_file()}
        s3 = _s3({})
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                                   Prefix=self.prefix + "/")
                for o in page.get("Contents", [])]
        return {k: s3.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in keys}

    def put(self, sha: str, data: bytes) -> None:
        if self.bucket is None:
            (self.root / self._key(sha)).write_bytes(data)
        else:
            _s3({}).put_object(Bucket=self.bucket, Key=f"{self.prefix}/{self._key(sha)}", Body=data)

    def delete(self, sha: str) -> None:
        if self.bucket is None:
            (self.root / self._key(sha)).unlink()
        else:
            _s3({}).delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{self._key(sha)}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _damage_three(remote: _Remote, source: Path) -> dict[str, str]:
    """Truncates one object, overwrites one with other bytes of the same size, deletes one;
    returns {entry name: what was done}."""
    victims = sorted(names_in(source))[:3]
    data = [(source / v).read_bytes() for v in victims]
    remote.put(_sha(data[0]), data[0][: len(data[0]) // 2])
    remote.put(_sha(data[1]), bytes(b ^ 0xFF for b in data[1]))
    remote.delete(_sha(data[2]))
    return dict(zip(victims, ["truncated", "overwritten", "deleted"]))


def test_push_verify_heals_damaged_objects(remote: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """A pushed object truncated, overwritten (same size) and deleted on the remote: every pull
    refuses or misses them until a push heals them. A plain push sees two from the listing;
    --verify reads the rest back and sees the third; --dry-run changes nothing; after the heal
    a fresh node pulls everything and every SHA-256 checks."""
    url, extra = remote
    env = node_env(tmp_path / "home", **extra)
    source = synthetic_cache(tmp_path / "a", 6, tag="heal", size=40_000)
    expected = _entry_files(source)
    assert cli_json("--cache-dir", str(tmp_path / "a"), "push", url, env=env)["ok"]
    files = _Remote(url)
    damage = _damage_three(files, source)
    by_how = {how: name for name, how in damage.items()}

    proc = cli("--cache-dir", str(tmp_path / "n1"), "pull", url, "-q", env=env)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "3 of 6 objects not pulled" in proc.stderr
    assert names_in(tmp_path / "n1" / f"jaxlib-{JAXLIB}") == set(expected) - set(damage)

    # A plain push: missing or cut short shows in the listing it makes anyway; an overwrite does not.
    plain = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, "--dry-run", env=env)
    assert {d["name"]: d["problem"] for d in plain["damaged"]} == {by_how["truncated"]: "size",
                                                                    by_how["deleted"]: "missing"}
    assert sorted(plain["repair"]) == sorted([by_how["truncated"], by_how["deleted"]])
    assert plain["verified"] is None and plain["already"] == 4

    before = files.files()
    planned = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, "--verify", "--dry-run", env=env)
    assert sorted(planned["repair"]) == sorted(damage) and planned["send"] == []
    assert {d["name"]: d["problem"] for d in planned["damaged"]} == {
        by_how["truncated"]: "size", by_how["overwritten"]: "content", by_how["deleted"]: "missing"}
    assert all(d["heal"] for d in planned["damaged"])
    assert planned["verified"] == 4 and planned["already"] == 3 and planned["unchecked"] == []
    assert planned["bytes"] == sum(len(expected[n]) for n in damage)
    human = cli("--cache-dir", str(tmp_path / "a"), "push", url, "--verify", "--dry-run", "-q", env=env)
    assert human.returncode == 0 and human.stderr == "", human.stderr
    problem = {"truncated": "cut short or grown", "overwritten": "altered", "deleted": "missing"}
    rows = [line for line in human.stdout.splitlines() if "would re-send" in line]
    assert len(rows) == 3
    for name, how in damage.items():
        module, key = name.rsplit("-", 2)[:2]
        assert [row for row in rows if row.startswith(f"{module}-{key[:12]}...-cache") and problem[how] in row]
    assert "Would send 3 objects" in human.stdout and "heal 3 damaged" in human.stdout
    assert files.files() == before  # a plan, even one that reads every object back, writes nothing

    healed = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, "--verify", env=env)
    assert healed["ok"] and sorted(healed["healed"]) == sorted(damage) and healed["transferred"]["done"] == 3
    assert healed["manifest"] is None  # the same bytes under the same names: no manifest to change
    assert not list(source.rglob("verify"))  # its reads, checked and dropped, leave no folder behind
    objects = {k.rsplit("/", 1)[1]: v for k, v in files.files().items() if "/objects/" in k}
    assert set(objects) == {_sha(d) for d in expected.values()}
    assert all(_sha(data) == sha for sha, data in objects.items())  # each whole again under its name

    # The node that was refused gets the rest; a fresh node gets everything; every SHA-256 checks.
    again = cli_json("--cache-dir", str(tmp_path / "n1"), "pull", url, env=env)
    assert again["ok"] and sorted(again["fetch"]) == sorted(damage)
    fresh = cli_json("--cache-dir", str(tmp_path / "n2"), "pull", url, env=env)
    assert fresh["ok"] and len(fresh["fetch"]) == 6
    for node in ("n1", "n2"):
        got = _entry_files(tmp_path / node / f"jaxlib-{JAXLIB}")
        assert {n: _sha(d) for n, d in got.items()} == {n: _sha(d) for n, d in expected.items()}

    clean = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, "--verify", env=env)
    assert clean["damaged"] == [] and clean["unchecked"] == [] and clean["verified"] == 6 and clean["repair"] == []


def _same_names_other_bytes(source: Path, root: Path) -> Path:
    """Another node's folder with the same entries as ``source``, each with other bytes: what another
    process compiling the same keys writes (JAX's header holds that process's own compile time)."""
    folder = synthetic_cache(root, 0, tag="none")
    for path in source.glob("*-cache"):
        body = zlib.decompress(path.read_bytes())
        (folder / path.name).write_bytes(zlib.compress((7).to_bytes(4, "big") + body[4:]))
    return folder


def test_another_node_heals_with_its_own_bytes(remote: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """The node that pushed is gone; another holds the same entries with its own (valid) bytes.
    Its push names its own copy of each damaged object in a new manifest, which supersedes the
    one naming the damage; a node holding none of them is told, in one line, what it cannot heal."""
    url, extra = remote
    env = node_env(tmp_path / "home", **extra)
    source = synthetic_cache(tmp_path / "a", 5, tag="other", size=40_000)
    assert cli_json("--cache-dir", str(tmp_path / "a"), "push", url, env=env)["ok"]
    damage = _damage_three(_Remote(url), source)

    synthetic_cache(tmp_path / "c", 2, tag="unrelated")
    unrelated = cli("--cache-dir", str(tmp_path / "c"), "push", url, "--verify", "-q", env=env)
    assert unrelated.returncode == 0 and len(unrelated.stderr.strip().splitlines()) == 1, unrelated.stderr
    # It reads back only what it holds: the two the listing shows, not the overwritten one.
    assert "2 objects named on" in unrelated.stderr and "not healed" in unrelated.stderr
    assert unrelated.stdout.count("not healed") == 2

    b = _same_names_other_bytes(source, tmp_path / "b")
    mine = _entry_files(b)
    plain = cli_json("--cache-dir", str(tmp_path / "b"), "push", url, env=env)
    assert plain["ok"] and plain["manifest"] and len(plain["healed"]) == 2  # from the listing
    verified = cli_json("--cache-dir", str(tmp_path / "b"), "push", url, "--verify", env=env)
    assert verified["ok"] and verified["manifest"] and verified["healed"] == [
        n for n, how in damage.items() if how == "overwritten"]

    fresh = cli_json("--cache-dir", str(tmp_path / "n"), "pull", url, env=env)
    assert fresh["ok"] and len(fresh["fetch"]) == 7
    got = _entry_files(tmp_path / "n" / f"jaxlib-{JAXLIB}")
    theirs = _entry_files(source)
    for name in names_in(source):
        assert got[name] == (mine[name] if name in damage else theirs[name])


def test_an_object_verify_cannot_read_is_reported_not_judged(bucket: dict[str, str], tmp_path: Path) -> None:
    """An object a lifecycle rule moved to an archive class is listed whole but cannot be read:
    --verify says so in one line and exits 1, and does not take it for damage (nothing re-sent)."""
    url = f"s3://{bucket['BUCKET']}/archived"
    env = node_env(tmp_path / "home", **{k: v for k, v in bucket.items() if k != "BUCKET"})
    source = synthetic_cache(tmp_path / "a", 3, tag="glacier")
    assert cli_json("--cache-dir", str(tmp_path / "a"), "push", url, env=env)["ok"]
    victim = sorted(names_in(source))[0]
    data = (source / victim).read_bytes()
    _s3(bucket).put_object(Bucket=bucket["BUCKET"], Key=f"archived/jaxlib-{JAXLIB}/objects/{_sha(data)}", Body=data,
                           StorageClass="GLACIER")
    proc = cli("--cache-dir", str(tmp_path / "a"), "push", url, "--verify", "-q", env=env)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "1 of 3 objects not verified" in proc.stderr and victim in proc.stderr
    plan = cli_json("--cache-dir", str(tmp_path / "a"), "push", url, "--verify", "--dry-run", env=env, code=1)
    assert [u["name"] for u in plan["unchecked"]] == [victim]
    assert plan["verified"] == 2 and plan["damaged"] == [] and plan["repair"] == [] and plan["already"] == 3
