"""The fleet's model and its manifests on a plain-folder remote (a shared filesystem).

What each object is (from a cache really warmed by JAX), what a node can hit,
and the manifest protocol: two pushers at once, in the interleavings that
could lose an entry, lose nothing. The helpers and fixtures here are also
used by the other ``test_fleet_*`` modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import filelock
import pytest

from jaxcache import exeformat, jaxformat, provenance
from jaxcache.fleet import catalog, local, trust
from jaxcache.fleet.errors import TrustError
from jaxcache.fleet.manifest import Manifest, ObjectRecord, merge, valid_name
from jaxcache.fleet.node import this_node, verdict
from jaxcache.fleet.remote import LocalStore
from jaxcache.fleet.sync import plan_pull, plan_push, pull, push
from jaxcache.settings import resolve
from jaxcache_testing import REPO, _ISOLATED_VARS, compile_program, run_python

WARM_ARGS = ("--problem", "bratu", "--size", "6")
JAXLIB = provenance.installed_versions().jaxlib  # type: ignore[union-attr]


# ---------------------------------------------------------------- helpers shared by the fleet tests

def node_env(home: Path, **extra: str) -> dict[str, str]:
    """A node's environment: nothing inherited that points at a cache, its own config home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_VARS)}
    env.update(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``jaxcache ARGS`` in a fresh process, as a node's job script runs it."""
    return subprocess.run([sys.executable, "-m", "jaxcache", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def cli_json(*args: str, env: dict[str, str], code: int = 0) -> dict:
    proc = cli(*args, "--json", env=env)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout)


def solve_counts(cache: Path, env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """A bratu solve under `jaxcache run --json` in a fresh process: (hits, misses) per solver kernel."""
    proc = cli("--cache-dir", str(cache), "run", "--json", "--", sys.executable, "-m", "solver", *WARM_ARGS, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {m: (c["hits"], c["misses"]) for m, c in report["modules"].items() if m.startswith("jit_lsq_")}


def compiled_no_solver_kernel(counts: dict[str, tuple[int, int]]) -> bool:
    return set(counts) == {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"} and all(
        misses == 0 and hits >= 1 for hits, misses in counts.values())


@pytest.fixture(scope="session")
def warmed_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache warmed once per test run (all xdist workers share it) for the bratu solve above."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's folder, either way
    root = shared / "fleet-warmed"
    with filelock.FileLock(str(shared / "fleet-warmed.lock")):
        if not (root / ".done").exists():
            shutil.rmtree(root, ignore_errors=True)
            env = node_env(shared / "fleet-warm-home")
            proc = cli("--cache-dir", str(root / "cache"), "warm", "--json", "--jobs", "1", *WARM_ARGS, env=env)
            assert proc.returncode == 0, proc.stderr
            (root / ".done").touch()
    return root / "cache"


@pytest.fixture
def warmed(warmed_once: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`warmed_once` (keys hold no folder path: see test_moved_cache_keys_hold_no_path)."""
    root = tmp_path / "warmed"
    shutil.copytree(warmed_once, root, symlinks=True)
    return root


def synthetic_cache(root: Path, count: int, *, tag: str, size: int = 2000) -> Path:
    """A version folder of ``count`` entries in JAX's format (zlib of a 4-byte header and bytes).

    For the manifest protocol, which never loads an entry, many distinct
    entries matter more than real programs; everything that loads one uses
    caches JAX wrote.
    """
    versions = provenance.installed_versions()
    assert versions is not None
    folder = provenance.ensure_version_dir(root, versions)
    for i in range(count):
        body = (1).to_bytes(4, "big") + hashlib.sha256(f"{tag}-{i}".encode()).digest() * (size // 32)
        digest = hashlib.sha256(f"key-{tag}-{i}".encode()).hexdigest()
        (folder / f"jit_{tag}_{i}-{digest}-cache").write_bytes(zlib.compress(body))
    return folder


def names_in(folder: Path) -> set[str]:
    return {n for n in local.present(folder) if valid_name(n) is not None}


# ---------------------------------------------------------------- the model

def test_a_warmed_folder_is_described_object_by_object(warmed: Path) -> None:
    folder = warmed / f"jaxlib-{JAXLIB}"
    described = local.describe(folder)
    entries = [r for r in described.objects if r.kind == "entry"]
    stored = [r for r in described.objects if r.kind == "executable"]
    on_disk = sorted(p.name for p in folder.glob("*-cache"))
    assert sorted(r.name for r in entries) == on_disk and stored
    assert sorted(r.name for r in stored) == sorted(f"executables/{p.name}" for p in (folder / "executables").iterdir())
    for record in described.objects:
        data = (folder / record.name).read_bytes()
        assert record.size == len(data) and record.sha256 == hashlib.sha256(data).hexdigest()
        assert record.platform == "cpu"
    for record in entries:
        assert record.compression == "zlib" and record.module.startswith("jit_lsq_")
        # jaxcache's default (`xla_caches = auto`, no GPU plugin) keeps the folder path out of every key.
        assert record.keyed_path_known and record.keyed_path is None
        assert record.compile_seconds is not None
    for record in stored:
        header = exeformat.read_header(folder / record.name)
        assert record.cpu == header["host_cpu"] == this_node(folder).cpu
        assert record.device_count == 1 and record.device_kind
    assert described.refused == ()


def test_a_second_description_reads_nothing_again(warmed: Path) -> None:
    folder = warmed / f"jaxlib-{JAXLIB}"
    first = local.describe(folder)
    entry = folder / next(r for r in first.objects if r.kind == "entry").name
    # Same inode, size and mtime, other bytes: only a description that reads the file again would notice.
    st = entry.stat()
    with open(entry, "r+b") as f:
        f.write(b"\0" * 16)
    os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert local.describe(folder).objects == first.objects


def test_incomplete_objects_are_never_described(warmed: Path) -> None:
    folder = warmed / f"jaxlib-{JAXLIB}"
    entry = next(folder.glob("jit_lsq_iterate-*-cache"))
    entry.write_bytes(entry.read_bytes()[:-100])  # as a writer killed mid-write leaves it
    stored = next((folder / "executables").iterdir())
    stored.write_bytes(stored.read_bytes()[:-10])
    described = local.describe(folder)
    refused = dict(described.refused)
    assert entry.name in refused and f"executables/{stored.name}" in refused
    assert entry.name not in {r.name for r in described.objects}


def test_an_entry_keyed_to_its_folder_is_known_as_such(tmp_path: Path) -> None:
    """With XLA's sub-caches on (JAX's own default), jax 0.10 hashes the folder into every key."""
    root = tmp_path / "keyed"
    env = node_env(tmp_path / "home")
    run_python(compile_program(f"import jaxcache; jaxcache.configure({str(root)!r}, "
                               "xla_caches='xla_gpu_per_fusion_autotune_cache_dir')"), env=env)
    folder = root / f"jaxlib-{JAXLIB}"
    described = local.describe(folder)
    assert described.objects
    if not jaxformat.path_in_key(JAXLIB):  # from jax 0.11 the folder left the key: nothing to know
        assert all(r.keyed_path is None for r in described.objects)
        elsewhere = this_node(tmp_path / "other" / folder.name, xla_caches="xla_gpu_per_fusion_autotune_cache_dir")
        assert verdict(described.objects[0], elsewhere, path_in_key=False) is None
        return
    assert all(r.keyed_path == str(folder) for r in described.objects)
    same_place = this_node(folder, xla_caches="xla_gpu_per_fusion_autotune_cache_dir")
    elsewhere = this_node(tmp_path / "other" / folder.name, xla_caches="xla_gpu_per_fusion_autotune_cache_dir")
    default = this_node(tmp_path / "other" / folder.name)
    record = described.objects[0]
    assert verdict(record, same_place, path_in_key=True) is None
    assert "its key holds" in verdict(record, elsewhere, path_in_key=True)
    assert "no folder path" in verdict(record, default, path_in_key=True)


def test_verdicts_follow_the_recorded_facts(tmp_path: Path) -> None:
    node = this_node(tmp_path)
    base = ObjectRecord(name="jit_f-" + "a" * 64 + "-cache", kind="entry", size=1, sha256="b" * 64, module="jit_f",
                        platform="cpu", compression=node.compression)
    assert verdict(base, node, path_in_key=True) is None
    from dataclasses import replace

    assert "cuda" in verdict(replace(base, platform="cuda"), node, path_in_key=True)
    assert verdict(replace(base, platform=None), node, path_in_key=True) is None  # unknown: pulled
    other = "zstd" if node.compression == "zlib" else "zlib"
    assert "compressed with" in verdict(replace(base, compression=other), node, path_in_key=True)
    exe = ObjectRecord(name="executables/" + "c" * 64 + ".jaxexe", kind="executable", size=1, sha256="d" * 64,
                       module="jit_f", platform="cpu", cpu="not-this-cpu")
    assert "another CPU" in verdict(exe, node, path_in_key=True)
    assert verdict(replace(exe, cpu=node.cpu), node, path_in_key=True) is None


@pytest.mark.parametrize("name", ["../jit_f-" + "a" * 64 + "-cache", "/etc/jit_f-" + "a" * 64 + "-cache",
                                  ".jit_f-" + "a" * 64 + "-cache", "sub/jit_f-" + "a" * 64 + "-cache",
                                  "executables/../" + "a" * 64 + ".jaxexe", "jit_f-" + "a" * 64 + "-atime",
                                  "executables/" + "A" * 64 + ".jaxexe", "jit_f-" + "a" * 63 + "-cache"])
def test_a_manifest_naming_anything_but_an_object_is_refused(name: str) -> None:
    record = {"name": name, "kind": "entry" if not name.startswith("executables") else "executable",
              "size": 1, "sha256": "a" * 64, "module": "m"}
    with pytest.raises(TrustError, match="unreadable manifest"):
        Manifest.from_dict({"format": 1, "jaxlib": JAXLIB, "objects": [record]})


def test_manifests_round_trip_and_merge_deterministically() -> None:
    a = ObjectRecord(name="jit_f-" + "1" * 64 + "-cache", kind="entry", size=3, sha256="f" * 64, module="jit_f")
    b = ObjectRecord(name=a.name, kind="entry", size=4, sha256="0" * 64, module="jit_f")
    m1 = Manifest(jaxlib=JAXLIB, jax=None, path_in_key=True, objects=(a,))
    m2 = Manifest(jaxlib=JAXLIB, jax=None, path_in_key=True, objects=(b,))
    assert merge([m1, m2]) == merge([m2, m1]) == {a.name: b}
    data = catalog.encode(m1, None)
    again, status = catalog.decode(data, trust.Policy(), what="m")
    assert again == m1 and status == "unsigned"


# ---------------------------------------------------------------- trust

KEY = b"k" * 32
OTHER = b"o" * 32


def test_signatures(tmp_path: Path) -> None:
    manifest = Manifest(jaxlib=JAXLIB, jax=None, path_in_key=True, objects=())
    signed = catalog.encode(manifest, KEY)
    assert catalog.decode(signed, trust.Policy(key=KEY), what="m")[1] == "signed"
    assert catalog.decode(signed, trust.Policy(), what="m")[1] == "unverified"
    with pytest.raises(TrustError, match="signed with another key"):
        catalog.decode(signed, trust.Policy(key=OTHER), what="m")
    envelope = json.loads(__import__("gzip").decompress(signed))
    envelope["manifest"]["jax"] = "9.9.9"  # altered after signing
    altered = __import__("gzip").compress(json.dumps(envelope).encode())
    with pytest.raises(TrustError, match="altered"):
        catalog.decode(altered, trust.Policy(key=KEY), what="m")
    unsigned = catalog.encode(manifest, None)
    with pytest.raises(TrustError, match="strict mode"):
        catalog.decode(unsigned, trust.Policy(key=KEY, strict=True), what="m")
    with pytest.raises(TrustError, match="strict mode"):
        catalog.decode(signed, trust.Policy(strict=True), what="m")


def test_keys_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    from jaxcache.errors import UsageError

    assert trust.load_key(env={}) is None
    assert trust.load_key(env={"JAXCACHE_FLEET_KEY": "x" * 20}) == b"x" * 20
    path = tmp_path / "key"
    path.write_text("y" * 40 + "\n")
    assert trust.load_key(env={"JAXCACHE_FLEET_KEY_FILE": str(path)}) == b"y" * 40
    assert trust.load_key(path, env={"JAXCACHE_FLEET_KEY": "x" * 20}) == b"y" * 40
    with pytest.raises(UsageError, match="at least 16"):
        trust.load_key(env={"JAXCACHE_FLEET_KEY": "short"})


# ---------------------------------------------------------------- the protocol, on a plain folder

def _push(root: Path, remote: str, key: bytes | None = None):
    settings = resolve(cache_dir=root)
    return push(plan_push(settings, remote, policy=trust.Policy(key=key)), key=key)


def _remote_names(remote: Path, key: bytes | None = None) -> set[str]:
    return set(catalog.read_catalog(LocalStore(remote), JAXLIB, policy=trust.Policy(key=key)).records)


def test_push_then_pull_through_a_shared_folder(tmp_path: Path) -> None:
    folder = synthetic_cache(tmp_path / "a", 20, tag="a")
    remote = tmp_path / "remote"
    result = _push(tmp_path / "a", str(remote))
    assert result.ok and len(result.transferred.done) == 20 and result.manifest
    assert _push(tmp_path / "a", str(remote)).plan.uploads == ()  # nothing new: nothing sent
    settings = resolve(cache_dir=tmp_path / "b")
    plan = plan_pull(settings, str(remote))
    assert len(plan.fetch) == 20 and plan.here == 0
    pulled = pull(plan, settings)
    assert pulled.ok and names_in(tmp_path / "b" / folder.name) == names_in(folder)
    for name in names_in(folder):
        assert (tmp_path / "b" / folder.name / name).read_bytes() == (folder / name).read_bytes()
    again = plan_pull(settings, str(remote))
    assert again.fetch == () and again.here == 20 and again.catalog.reads == 1  # one small read: HEAD



def test_a_plain_push_resends_what_the_listing_shows_missing_or_resized(tmp_path: Path) -> None:
    """Objects are skipped by name, so a push compares the listing it makes anyway with the
    manifests' sizes: a deleted or cut-short object is sent again (the same bytes: no new
    manifest). An overwrite of the same size needs --verify (test_fleet_s3.py)."""
    folder = synthetic_cache(tmp_path / "a", 5, tag="size", size=40_000)
    remote = tmp_path / "remote"
    _push(tmp_path / "a", str(remote))
    objects = remote / f"jaxlib-{JAXLIB}" / "objects"
    cut, gone, flipped = sorted(names_in(folder))[:3]
    sha = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in (cut, gone, flipped)}
    (objects / sha[cut]).write_bytes((folder / cut).read_bytes()[:-7])
    (objects / sha[gone]).unlink()
    (objects / sha[flipped]).write_bytes(bytes(b ^ 1 for b in (folder / flipped).read_bytes()))
    result = _push(tmp_path / "a", str(remote))
    assert result.ok and sorted(result.healed) == sorted([cut, gone]) and result.manifest is None
    assert {d.name: d.problem for d in result.plan.damaged} == {cut: "size", gone: "missing"}
    assert result.plan.already == 3 and result.plan.verified is None  # the flipped one passes a listing
    for name in (cut, gone):
        assert (objects / sha[name]).read_bytes() == (folder / name).read_bytes()
    settings = resolve(cache_dir=tmp_path / "b")
    pulled = pull(plan_pull(settings, str(remote)), settings)
    assert [n for n, _ in pulled.transferred.failed] == [flipped] and len(pulled.transferred.done) == 4
    healed = push(plan_push(resolve(cache_dir=tmp_path / "a"), str(remote), verify=True))
    assert healed.ok and healed.healed == (flipped,) and healed.plan.verified == 5
    assert pull(plan_pull(settings, str(remote)), settings).transferred.done == (flipped,)
    assert not (folder / ".jaxcache" / "fleet" / "verify").exists()  # verify's reads leave nothing, not even a folder

class PausingStore(LocalStore):
    """The real folder store, with a point where another pusher runs to completion."""

    def __init__(self, root: Path, *, before: str, run) -> None:  # noqa: ANN001
        super().__init__(root)
        self.before, self.run = before, run

    def write(self, name: str, data: bytes) -> None:
        if self.run is not None and name.endswith(self.before):
            run, self.run = self.run, None
            run()
        super().write(name, data)


@pytest.mark.parametrize("pause_at", ["HEAD.json", ".json.gz"])
def test_two_pushers_interleaved_lose_nothing(tmp_path: Path, pause_at: str) -> None:
    """Pusher B runs whole in the middle of A's push: after A read the remote (before A's
    manifest is written), and, the harder case, after A wrote its manifest and listed the
    manifests but before it wrote HEAD (A's HEAD is then stale when written)."""
    synthetic_cache(tmp_path / "base", 3, tag="base")
    synthetic_cache(tmp_path / "a", 5, tag="a")
    synthetic_cache(tmp_path / "b", 7, tag="b")
    remote = tmp_path / "remote"
    _push(tmp_path / "base", str(remote))
    store = PausingStore(remote, before=pause_at, run=lambda: _push(tmp_path / "b", str(remote)))
    plan = plan_push(resolve(cache_dir=tmp_path / "a"), store)
    push(plan)
    expected = set().union(*(names_in(tmp_path / n / f"jaxlib-{JAXLIB}") for n in ("base", "a", "b")))
    assert len(expected) == 15
    head = json.loads((remote / f"jaxlib-{JAXLIB}" / "HEAD.json").read_text())["manifests"]
    assert len(head) == 2  # A's and B's: neither supersedes the other
    cat = catalog.read_catalog(LocalStore(remote), JAXLIB, policy=trust.Policy())
    assert set(cat.records) == expected and not cat.listed  # HEAD alone is enough
    settings = resolve(cache_dir=tmp_path / "node")
    pull(plan_pull(settings, str(remote)), settings)
    assert names_in(tmp_path / "node" / f"jaxlib-{JAXLIB}") == expected


PUSHER = r"""
import sys
from jaxcache.settings import resolve
from jaxcache.fleet.sync import plan_push, push
for _ in range(int(sys.argv[3])):
    result = push(plan_push(resolve(cache_dir=sys.argv[1]), sys.argv[2]))
    assert result.ok, result.as_dict()
"""


def concurrent_pushers(tmp_path: Path, remote: str, env: dict[str, str], *, pushers: int = 4,
                       each: int = 6) -> set[str]:
    """``pushers`` processes push their own caches to ``remote`` at once, three times each
    (the later rounds race the others' manifests). Returns every object name they hold."""
    expected: set[str] = set()
    for p in range(pushers):
        expected |= names_in(synthetic_cache(tmp_path / f"p{p}", each, tag=f"p{p}"))
    procs = [subprocess.Popen([sys.executable, "-c", PUSHER, str(tmp_path / f"p{p}"), remote, "3"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(pushers)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    return expected


def test_concurrent_pushers_lose_nothing(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    expected = concurrent_pushers(tmp_path, str(remote), node_env(tmp_path / "home"))
    assert _remote_names(remote) == expected
    assert not list((remote / f"jaxlib-{JAXLIB}").rglob(".jaxcache-tmp-*"))  # every write whole


def test_superseded_manifests_are_collected_after_the_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = tmp_path / "remote"
    for i in range(3):
        synthetic_cache(tmp_path / "a", 2 * (i + 1), tag="a")
        _push(tmp_path / "a", str(remote))
    manifests = remote / f"jaxlib-{JAXLIB}" / "manifests"
    assert len(list(manifests.iterdir())) == 3  # within the grace: nothing deleted
    monkeypatch.setattr(catalog, "GC_GRACE_SECS", 0.0)
    synthetic_cache(tmp_path / "a", 8, tag="a")
    _push(tmp_path / "a", str(remote))
    assert len(list(manifests.iterdir())) < 4
    assert _remote_names(remote) == names_in(tmp_path / "a" / f"jaxlib-{JAXLIB}")


def test_a_keyed_reader_ignores_unsigned_manifests_and_refuses_another_key(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    synthetic_cache(tmp_path / "ci", 4, tag="ci")
    synthetic_cache(tmp_path / "dev", 3, tag="dev")
    _push(tmp_path / "ci", str(remote), key=KEY)
    _push(tmp_path / "dev", str(remote))  # no key: unsigned, and it supersedes the signed one
    ci = names_in(tmp_path / "ci" / f"jaxlib-{JAXLIB}")
    assert _remote_names(remote, key=KEY) == ci  # the signed manifest still counts; the unsigned one adds nothing
    assert _remote_names(remote) == ci | names_in(tmp_path / "dev" / f"jaxlib-{JAXLIB}")
    # A pusher with another key (it would refuse to push onto this remote itself, so its manifest is written directly).
    rogue = local.describe(synthetic_cache(tmp_path / "rogue", 2, tag="rogue")).manifest()
    catalog.publish(LocalStore(remote), rogue, key=OTHER)
    with pytest.raises(TrustError, match="another key"):
        _remote_names(remote, key=KEY)


def test_a_pull_with_nothing_new_reads_head_alone_and_notices_every_change(tmp_path: Path) -> None:
    synthetic_cache(tmp_path / "a", 6, tag="n")
    remote = str(tmp_path / "remote")
    _push(tmp_path / "a", remote)
    settings = resolve(cache_dir=tmp_path / "node")
    pull(plan_pull(settings, remote), settings)
    unchanged = plan_pull(settings, remote)
    assert unchanged.fetch == () and unchanged.here == 6 and unchanged.catalog.reads == 1
    assert unchanged.catalog.as_dict()["objects"] == 6
    folder = tmp_path / "node" / f"jaxlib-{JAXLIB}"
    gone = sorted(names_in(folder))[0]
    (folder / gone).unlink()  # pruned here: the next pull brings it back
    assert [r.name for r in plan_pull(settings, remote).fetch] == [gone]
    pull(plan_pull(settings, remote), settings)
    synthetic_cache(tmp_path / "a", 8, tag="n")  # a new push changes HEAD
    _push(tmp_path / "a", remote)
    assert len(plan_pull(settings, remote).fetch) == 2
    keyed = plan_pull(settings, remote, policy=trust.Policy(key=KEY))  # another policy: read in full
    assert keyed.fetch == () and keyed.catalog.ignored  # the unsigned manifest is not used with a key


def test_a_pull_into_a_capped_cache_gives_each_entry_its_atime(tmp_path: Path) -> None:
    """JAX's eviction (jaxlib < 0.11.2) fails every write while one -cache lacks its -atime."""
    synthetic_cache(tmp_path / "a", 4, tag="cap")
    remote = str(tmp_path / "remote")
    _push(tmp_path / "a", remote)
    settings = resolve(cache_dir=tmp_path / "node", max_size="1GB")
    assert pull(plan_pull(settings, remote), settings).ok
    folder = tmp_path / "node" / f"jaxlib-{JAXLIB}"
    for name in names_in(folder):
        atime = folder / jaxformat.atime_file_name(name[: -len("-cache")])
        assert jaxformat.decode_atime(atime.read_bytes()) is not None
    import time

    from jaxcache.integrity import check
    from jaxcache.scanning import scan

    # As `jaxcache check` sees it a minute later (younger entries may be mid-write and are not judged).
    report = check(scan(tmp_path / "node"), capped=True, installed_version=JAXLIB, now=time.time() + 60)
    assert not [f for f in report.findings if f.severity in ("error", "warning")], report.findings
