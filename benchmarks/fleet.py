"""Does one warm serve a fleet? Pulled nodes against local warms and cold starts, and what a pull costs.

Three questions, answered in one run against an S3 server on 127.0.0.1 (moto's
server mode, in its own process, so it does not share this process's GIL):

1. First solve of ``kinetics`` in a fresh process, on a node that
   - compiles cold (an empty cache),
   - was warmed locally (``jaxcache warm``),
   - pulled what another node warmed and pushed (``jaxcache pull``, timed on
     its own, then the solve).
   Each two ways: JAX alone, configured through the environment as ``jaxcache
   hook`` leaves it (only JAX's entries serve); and ``jaxcache.configure()`` in
   the process (the executable store serves the solver's kernels whole, as under
   ``jaxcache run`` and ``pytest --jaxcache``).
   Goals (issue 13): pulled within 1.2x of locally warmed; at least 5x faster than cold.
2. ``pull`` of 1,000 entries with 16 objects in flight against one at a time,
   straight to the loopback server, and through a proxy that adds a round
   trip to every request (``--rtt-ms``, default 20 and 50 ms: a node and a
   bucket in one region, and farther). Goal: concurrent at least 5x faster.
3. A pull with nothing new when the remote's manifest names 10,000 entries
   (the node already holds them all): in process, and as a whole ``jaxcache
   pull`` process. Goal: under 0.5 s. The manifest is published without its
   objects, which a no-op pull never fetches.

Usage:
    python benchmarks/fleet.py [--size 64] [--repeat 3] [--entries 1000] [--rtt-ms 20 --rtt-ms 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from _common import PYTHON, clean_env, median, print_table, timed_run, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"

SOLVE = r"""
import json, sys, time
t0 = time.perf_counter()
if sys.argv[3] == "configured":
    import jaxcache
    jaxcache.configure()  # JAXCACHE_DIR and the rest come from the environment
import jax, solver
objective, x0 = solver.problems.get(sys.argv[1], int(sys.argv[2]))
result = solver.least_squares(objective, x0)
assert result.success
print(json.dumps({"in_process": time.perf_counter() - t0}))
"""

# A TCP proxy that holds each response's first bytes back for one round trip.
PROXY = r"""
import asyncio, sys
listen, upstream, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def handle(reader, writer):
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
    state = {"asked": False}
    async def forward_requests():
        while data := await reader.read(65536):
            state["asked"] = True
            up_writer.write(data)
            await up_writer.drain()
        up_writer.close()
    async def forward_responses():
        while data := await up_reader.read(65536):
            if state["asked"]:
                state["asked"] = False
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
        writer.close()
    await asyncio.gather(forward_requests(), forward_responses(), return_exceptions=True)
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Servers:
    """moto's S3 server and a round-trip proxy per RTT in front of it, each in its own process."""

    def __init__(self, rtts_ms: list[float]) -> None:
        self.port = free_port()
        self.procs = [subprocess.Popen([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        wait_for(self.port)
        self.proxies: dict[float, int] = {}
        for rtt in rtts_ms:
            self.proxies[rtt] = free_port()
            self.procs.append(subprocess.Popen([PYTHON, "-c", PROXY, str(self.proxies[rtt]), str(self.port),
                                                str(rtt / 1000)], stdout=subprocess.DEVNULL))
            wait_for(self.proxies[rtt])
        self.env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_CONFIG_FILE": "/nonexistent",
                    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
        os.environ.update(self.env)
        import boto3

        boto3.client("s3").create_bucket(Bucket="fleet")

    def use(self, rtt_ms: float | None) -> None:
        port = self.port if rtt_ms is None else self.proxies[rtt_ms]
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait()


def node_env(home: Path, **extra: str) -> dict[str, str]:
    return clean_env(JAX_PLATFORMS="cpu", XDG_CONFIG_HOME=str(home / "config"), **extra,
                     **{k: v for k, v in os.environ.items() if k.startswith("AWS_")})


def jaxcache(*args: str, env: dict[str, str]) -> tuple[float, str]:
    return timed_run([PYTHON, "-m", "jaxcache", *args], env)


MODES = ("environment", "configured")


def solve(cache: Path, problem: str, size: int, env: dict[str, str], mode: str) -> dict[str, float]:
    """A first solve in a fresh process, the cache set through the environment (as `hook` does it),
    and, in the "configured" mode, also by ``jaxcache.configure()`` in the process."""
    from jaxcache.configuration import cache_env, prepare_folder
    from jaxcache.settings import resolve

    settings = resolve(cache_dir=cache)
    jax_dir, _ = prepare_folder(settings)
    wall, out = timed_run([PYTHON, "-c", SOLVE, problem, str(size), mode], {**env, **cache_env(settings, jax_dir)})
    return {"wall": wall, "in_process": json.loads(out)["in_process"]}


def question_1(tmp: Path, problem: str, size: int, repeat: int) -> dict:
    env = node_env(tmp / "home")
    warmed = tmp / "warmed"
    jaxcache("--cache-dir", str(warmed), "warm", "--problem", problem, "--size", str(size), env=env)
    remote = "s3://fleet/solve"
    jaxcache("--cache-dir", str(warmed), "push", remote, "-q", env=env)
    runs: dict[str, dict[str, list]] = {mode: {"cold": [], "local": [], "pulled": []} for mode in MODES}
    pulls = []
    for i in range(repeat):  # interleaved, so the machine's drift hits every mode alike
        node = tmp / f"node{i}"
        pull_s, _ = jaxcache("--cache-dir", str(node), "pull", remote, "-q", env=env)
        pulls.append(pull_s)
        for mode in MODES:
            runs[mode]["cold"].append(solve(tmp / f"cold-{mode}-{i}", problem, size, env, mode))
            runs[mode]["local"].append(solve(warmed, problem, size, env, mode))
            runs[mode]["pulled"].append(solve(node, problem, size, env, mode))

    def m(values: list[dict[str, float]]) -> float:
        return median([r["in_process"] for r in values])

    pull = median(pulls)
    out: dict = {"problem": problem, "size": size, "repeat": repeat, "pull_s": pull,
                 "objects": len(list((tmp / "node0").rglob("*-cache"))),
                 "executables": len(list((tmp / "node0").rglob("*.jaxexe"))), "pull_runs": pulls}
    for mode in MODES:
        c, w, p = m(runs[mode]["cold"]), m(runs[mode]["local"]), m(runs[mode]["pulled"])
        out[mode] = {"cold_s": c, "local_warm_s": w, "pulled_s": p, "pulled_over_local": p / w,
                     "cold_over_pulled": c / p, "cold_over_pull_plus_solve": c / (p + pull), "runs": runs[mode]}
    return out


def synthetic(root: Path, count: int, size: int) -> Path:
    from jaxcache import provenance

    versions = provenance.installed_versions()
    assert versions is not None
    folder = provenance.ensure_version_dir(root, versions)
    for i in range(count):
        body = (1).to_bytes(4, "big") + os.urandom(size)
        digest = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
        (folder / f"jit_bench_{i % 97}-{digest}-cache").write_bytes(zlib.compress(body, 1))
    return folder


def question_2(tmp: Path, servers: Servers, entries: int, rtts_ms: list[float]) -> dict:
    from jaxcache.fleet import plan_pull, plan_push, pull, push
    from jaxcache.settings import resolve

    synthetic(tmp / "source", entries, 16_000)
    remote = "s3://fleet/many"
    servers.use(None)
    push(plan_push(resolve(cache_dir=tmp / "source"), remote, jobs=16), jobs=16)
    out: dict[str, dict[str, float]] = {}
    for rtt in [None, *rtts_ms]:
        servers.use(rtt)
        times = {}
        for jobs in (1, 16):
            settings = resolve(cache_dir=tmp / f"pull-{rtt}-{jobs}")
            start = time.perf_counter()
            result = pull(plan_pull(settings, remote, jobs=jobs), settings, jobs=jobs)
            times[f"jobs_{jobs}_s"] = time.perf_counter() - start
            assert result.ok and len(result.transferred.done) == entries, result.transferred.failed[:3]
        times["speedup"] = times["jobs_1_s"] / times["jobs_16_s"]
        out["loopback" if rtt is None else f"+{rtt:g} ms RTT"] = times
    servers.use(None)
    return {"entries": entries, "entry_bytes": 16_000, "rtt_ms": rtts_ms, "results": out}


def question_3(tmp: Path, count: int) -> dict:
    from jaxcache.fleet import catalog, local, plan_pull
    from jaxcache.fleet.remote import open_store
    from jaxcache.settings import resolve

    folder = synthetic(tmp / "big", count, 200)
    remote = "s3://fleet/big"
    catalog.publish(open_store(remote), local.describe(folder).manifest(), key=None)
    node = tmp / "node-big"
    shutil.copytree(tmp / "big", node)  # the node already has every entry: nothing new
    settings = resolve(cache_dir=node)
    start = time.perf_counter()
    first = plan_pull(settings, remote)  # reads the manifest once and keeps a copy
    first_s = time.perf_counter() - start
    assert not first.fetch and first.here == count
    noop, noop_open = [], []
    store = open_store(remote)
    for _ in range(5):
        start = time.perf_counter()
        plan = plan_pull(settings, remote)  # a new S3 client each time, as a new process has
        noop.append(time.perf_counter() - start)
        assert not plan.fetch and plan.catalog.reads == 1
        start = time.perf_counter()
        plan = plan_pull(settings, store)  # a client already connected (a long-lived process)
        noop_open.append(time.perf_counter() - start)
    walls = [jaxcache("--cache-dir", str(node), "pull", remote, "-q", env=node_env(tmp / "home"))[0] for _ in range(3)]
    python_start = median([timed_run([PYTHON, "-c", "pass"])[0] for _ in range(3)])
    return {"entries": count, "first_read_s": first_s, "noop_in_process_s": median(noop),
            "noop_open_client_s": median(noop_open),
            "noop_process_wall_s": median(walls), "python_start_s": python_start, "reads": 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="kinetics")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--manifest-entries", type=int, default=10_000)
    parser.add_argument("--rtt-ms", type=float, action="append", help="round trips to add (default: 20 and 50)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    rtts = args.rtt_ms or [20.0, 50.0]
    load_before = os.getloadavg()
    servers = Servers(rtts)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            q1 = question_1(Path(tmp) / "q1", args.problem, args.size, args.repeat)
        with tempfile.TemporaryDirectory() as tmp:
            q2 = question_2(Path(tmp), servers, args.entries, rtts)
        with tempfile.TemporaryDirectory() as tmp:
            q3 = question_3(Path(tmp), args.manifest_entries)
    finally:
        servers.stop()

    print(f"1. first solve of {q1['problem']}-{q1['size']} in a fresh process (in-process seconds, median of "
          f"{q1['repeat']}; pulled: {q1['objects']} JAX entries and {q1['executables']} stored executables, "
          f"in {q1['pull_s']:.2f} s)")
    print_table(("process set up by", "cold", "locally warmed", "pulled node", "pulled/local", "cold/pulled",
                 "cold/(pull+solve)"),
                [(mode, r["cold_s"], r["local_warm_s"], r["pulled_s"], f"{r['pulled_over_local']:.2f}x",
                  f"{r['cold_over_pulled']:.1f}x", f"{r['cold_over_pull_plus_solve']:.1f}x")
                 for mode, r in ((mode, q1[mode]) for mode in MODES)])
    print()
    print(f"2. pull of {q2['entries']} entries of {q2['entry_bytes'] // 1000} kB from the S3 server on 127.0.0.1")
    print_table(("network", "one at a time", "16 in flight", "speedup"),
                [(label, r["jobs_1_s"], r["jobs_16_s"], f"{r['speedup']:.1f}x") for label, r in q2["results"].items()])
    print()
    print(f"3. a pull with nothing new, the remote's manifest naming {q3['entries']} entries (one read: HEAD)")
    print_table(("first read of the manifest", "no-op, new client", "no-op, open client", "no-op, whole process",
                 "python -c pass"),
                [(q3["first_read_s"], q3["noop_in_process_s"], q3["noop_open_client_s"], q3["noop_process_wall_s"],
                  q3["python_start_s"])])
    load_after = os.getloadavg()
    print(f"\nload average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} cores")
    write_json(args.json, {"solve": q1, "concurrency": q2, "noop": q3, "cores": os.cpu_count(),
                           "load_before": load_before, "load_after": load_after,
                           "command": " ".join(["python", "benchmarks/fleet.py", *sys.argv[1:]])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
