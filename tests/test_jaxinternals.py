"""Contract tests: every JAX internal in `jaxcache.jaxinternals` holds for the installed JAX.

Each test pins one touchpoint against real JAX (fresh processes where the
touchpoint is process-wide state). Run on every supported JAX (0.6.1, 0.10.2,
0.11.x, 0.12.0.1): where a fact differs between versions the test asserts
the right one for the installed version, so an upgrade that breaks a
touchpoint fails here, loudly, before a user sees a feature go quiet.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxcache import jaxformat, jaxinternals

JAX_RELEASE = tuple(int(p) for p in re.findall(r"\d+", jax.__version__)[:3])


def _run(code: str, *args: str, block_etils: bool = False) -> dict:
    """Runs ``code`` in a fresh interpreter; returns the JSON object on its last stdout line."""
    prelude = "import sys\nsys.modules['etils'] = None\n" if block_etils else ""
    proc = subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PLAIN_CACHE = """
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
"""

RECORDS = r"""
import json, logging, os, sys, warnings
warnings.simplefilter("always")
""" + PLAIN_CACHE + r"""
import jax.numpy as jnp
from jaxcache import compilelog, jaxinternals

seq = []
def listener(kind, module, value):
    extra = jaxinternals.writing_platform() if kind == "write" else None
    seq.append(["record", kind, module, value, extra])
compilelog.listen(listener)
jaxinternals.on_jax_event(lambda event: seq.append(["event", event]))

names = []
class Names(logging.Handler):
    def emit(self, record):
        event = jaxinternals.classify(record)
        if event:
            names.append([record.name, event[0]])
for name in (jaxinternals.COMPILER_LOGGER, jaxinternals.CACHE_LOGGER):
    logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger(name).addHandler(Names())
    logging.getLogger(name).propagate = False

def double_sin(x):
    return jnp.sin(x) * 2

x = jnp.arange(3.0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax.jit(double_sin)(x).block_until_ready()
    jax.clear_caches()
    jax.jit(double_sin)(x).block_until_ready()
print(json.dumps({"seq": seq, "names": names, "files": sorted(os.listdir(sys.argv[1])),
                  "touchpoint_warnings": [str(w.message) for w in caught
                                          if issubclass(w.category, jaxinternals.TouchpointWarning)]}))
"""


def test_log_records_are_what_compilelog_reads_and_precede_their_events(tmp_path: Path) -> None:
    """Logger names, messages and args of hits, misses, writes and compile times; the
    monitoring events that follow them; the writer's frame (platform)."""
    out = _run(RECORDS, str(tmp_path))
    records = [r for r in out["seq"] if r[0] == "record" and r[2] == "jit_double_sin"]
    kinds = [r[1] for r in records]
    assert kinds == ["miss", "compile_time", "write", "hit"], records
    miss, compile_time, write, hit = records
    key = miss[3]
    assert write[3] == key and hit[3] == key and jaxformat.cache_file_name(key) in out["files"]
    assert isinstance(compile_time[3], float) and compile_time[3] >= 0
    assert write[4] == "cpu"  # the writer's frame names the backend's platform
    by_logger = {kind: name for name, kind in out["names"]}
    assert by_logger == {"miss": jaxinternals.COMPILER_LOGGER, "compile_time": jaxinternals.COMPILER_LOGGER,
                         "hit": jaxinternals.COMPILER_LOGGER, "write": jaxinternals.CACHE_LOGGER}
    # Each event follows, in the same thread, the record jaxcache counts it by.
    seen = {"hit": 0, "miss": 0, "write": 0}
    events = {jaxinternals.HIT_EVENT: 0, jaxinternals.WRITE_EVENT: 0, jaxinternals.REQUEST_EVENT: 0}
    for item in out["seq"]:
        if item[0] == "record":
            seen[item[1]] = seen.get(item[1], 0) + 1
        elif item[1] in events:
            events[item[1]] += 1
            assert seen["hit"] >= events[jaxinternals.HIT_EVENT], out["seq"]
            assert seen["write"] >= events[jaxinternals.WRITE_EVENT], out["seq"]
            assert seen["miss"] >= events[jaxinternals.WRITE_EVENT], out["seq"]
    assert events[jaxinternals.HIT_EVENT] >= 1 and events[jaxinternals.WRITE_EVENT] >= 1
    assert events[jaxinternals.REQUEST_EVENT] >= 2
    assert out["touchpoint_warnings"] == []


def test_a_changed_hit_record_turns_hit_counting_off_with_one_warning(tmp_path: Path) -> None:
    """What a JAX that logs hits differently looks like to jaxcache: said once, not silent."""
    code = RECORDS.replace("compilelog.listen(listener)", """compilelog.listen(listener)
from jax._src import compiler
compiler.log_persistent_cache_hit = lambda module_name, cache_key: compiler.logger.debug(
    "a new hit message for %s", module_name)
""").replace("    jax.jit(double_sin)(x).block_until_ready()\nprint", """    jax.jit(double_sin)(x).block_until_ready()
    jax.clear_caches()
    jax.jit(double_sin)(x).block_until_ready()
print""")
    out = _run(code, str(tmp_path))
    assert len(out["touchpoint_warnings"]) == 1, out["touchpoint_warnings"]
    assert "counting persistent-cache hits per module is off" in out["touchpoint_warnings"][0]


CACHE_STATE = PLAIN_CACHE.replace("import jax\n", "import json, jax\nfrom jaxcache import jaxinternals\n"
                                  "states = [jaxinternals.cache_state()]\n", 1) + """
jax.jit(lambda x: x + 1)(1.0)
states.append(jaxinternals.cache_state())
states.append(jaxinternals.reset_cache())
states.append(jaxinternals.cache_state())
print(json.dumps([s if isinstance(s, bool) else [s.opened, s.checked] for s in states]))
"""


def test_cache_state_and_reset(tmp_path: Path) -> None:
    """compilation_cache's _cache, _cache_initialized, _cache_checked and reset_cache()."""
    out = json.loads(subprocess.run([sys.executable, "-c", "import sys\n" + CACHE_STATE, str(tmp_path)],
                                    capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    assert out == [[None, False], [str(tmp_path), True], True, [None, False]]


def test_jaxs_default_min_entry_size_keeps_every_entry() -> None:
    """jaxcache leaves the threshold at JAX's default because that default keeps everything."""
    from jax._src import compilation_cache

    assert compilation_cache.default_min_cache_entry_size() == jaxinternals.MIN_ENTRY_SIZE_KEEPS_ALL == 0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes in (0, -1)  # 0 unless a test set jaxcache's -1


def test_the_options_configure_sets_exist() -> None:
    for name in ("jax_compilation_cache_dir", "jax_persistent_cache_min_entry_size_bytes",
                 "jax_persistent_cache_min_compile_time_secs", "jax_compilation_cache_max_size",
                 "jax_persistent_cache_enable_xla_caches", "jax_enable_compilation_cache"):
        assert hasattr(jax.config, name), name


PUTS = r"""
import hashlib, json, os, sys, warnings
from jax._src import lru_cache
from jaxcache import jaxinternals
renames = []
sys.addaudithook(lambda event, args: renames.append(os.path.basename(str(args[1])))
                 if event == "os.rename" and str(args[1]).endswith("-cache") else None)
original = lru_cache.LRUCache.put
assert jaxinternals.install_atomic_put()
ours = lru_cache.LRUCache.put
assert ours is not original

def run(put, folder, max_size):
    cache = lru_cache.LRUCache(folder, max_size=max_size)
    for key, size in [("k1", 100), ("k2", 100), ("k1", 50), ("k3", 150), ("k4", 10_000)]:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            put(cache, key, key.encode() * size)
    state = {}
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        state[name] = len(data) if name.endswith("-atime") else hashlib.sha256(data).hexdigest()
    return {"state": state, "path_type": type(cache.path).__name__, "got": cache.get("k3") is not None,
            "attributes": [a for a in ("eviction_enabled", "path", "lock", "lock_timeout_secs", "max_size")
                           if hasattr(cache, a)]}

out = {}
for max_size in (-1, 600):
    before = len(renames)
    out[f"jax {max_size}"] = run(original, os.path.join(sys.argv[1], f"jax{max_size}"), max_size)
    out[f"jax {max_size}"]["renames"] = renames[before:]
    before = len(renames)
    out[f"ours {max_size}"] = run(ours, os.path.join(sys.argv[1], f"ours{max_size}"), max_size)
    out[f"ours {max_size}"]["renames"] = renames[before:]
print(json.dumps(out))
"""


@pytest.mark.parametrize("paths", ["etils installed", "etils blocked"])
def test_the_put_replacement_does_what_jaxs_put_does_atomically(tmp_path: Path, paths: str) -> None:
    """Same files, contents, eviction and -atime files as LRUCache.put, capped or not; written
    through renames, for the path types JAX uses (pathlib, or etils' epath when installed)."""
    if paths == "etils installed":
        try:
            import etils.epath  # noqa: F401
        except ImportError:
            pytest.fail("etils[epath] is a test dependency: install jaxcache[test]")
    out = _run(PUTS, str(tmp_path), block_etils=paths == "etils blocked")
    for max_size in (-1, 600):
        jax_run, ours = out[f"jax {max_size}"], out[f"ours {max_size}"]
        assert ours["state"] == jax_run["state"], (max_size, ours["state"], jax_run["state"])
        assert ours["path_type"] == jax_run["path_type"] == ("PosixGPath" if paths == "etils installed" else
                                                               "PosixPath")
        written = ["k1", "k2", "k3"] + (["k4"] if max_size == -1 else [])  # k4 is over the cap
        assert jax_run["renames"] == [] and ours["renames"] == [f"{k}-cache" for k in written], ours["renames"]
        assert ours["got"] and jax_run["got"]
    capped = out["ours 600"]["state"]
    # k1 evicted for k3 (600 bytes: 200 + 300 + 300 > 600); k4 too big: JAX's own rules.
    assert sorted(capped) == [jaxformat.LOCKFILE_NAME, "k2-atime", "k2-cache", "k3-atime", "k3-cache"], capped
    assert all(size == jaxformat.ATIME_BYTES for name, size in capped.items() if name.endswith("-atime"))
    assert set(out["ours 600"]["attributes"]) == {"eviction_enabled", "path", "lock", "lock_timeout_secs",
                                                  "max_size"}


def test_jaxs_capped_cache_locks_the_lockfile_jaxcache_locks(tmp_path: Path) -> None:
    """LRUCache takes a filelock.FileLock on <folder>/.lockfile: jaxcache's folder_lock excludes it."""
    from jaxcache.locking import folder_lock

    code = r"""
import json, sys, filelock
from jax._src import lru_cache
cache = lru_cache.LRUCache(sys.argv[1], max_size=10**6)
try:
    cache.lock.acquire(timeout=0.5)
    cache.lock.release()
    blocked = False
except filelock.Timeout:
    blocked = True
print(json.dumps({"type": type(cache.lock).__name__, "file": str(cache.lock.lock_file),
                  "filelock": isinstance(cache.lock, filelock.FileLock), "blocked": blocked}))
"""
    free = _run(code, str(tmp_path))
    with folder_lock(tmp_path):
        held = _run(code, str(tmp_path))
    assert free["filelock"] and free["file"] == str(tmp_path / jaxformat.LOCKFILE_NAME)
    assert not free["blocked"] and held["blocked"]


def test_trace_context_is_hashable_and_follows_what_jit_keys_on() -> None:
    base = jaxinternals.trace_context()
    assert base is not None and hash(base) == hash(jaxinternals.trace_context())
    with jax.default_matmul_precision("highest"):
        assert jaxinternals.trace_context() != base
    was = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", not was)
    try:
        assert jaxinternals.trace_context() != base
    finally:
        jax.config.update("jax_enable_x64", was)


def test_the_store_key_covers_every_option_the_compiler_reads() -> None:
    """compiler.get_compile_options reads these config options into the compile options."""
    from jax._src import compiler
    from jax._src import config as jax_config

    read = set()
    for attr in set(re.findall(r"\bconfig\.(\w+)", inspect.getsource(compiler.get_compile_options))):
        holder = getattr(jax_config, attr)
        name = getattr(holder, "_name", None)
        if isinstance(name, str):
            read.add(name)
    assert "jax_optimization_level" in read
    assert read - {"jax_compilation_cache_dir"} <= set(jaxinternals.COMPILE_CONFIG_NAMES), read
    present = {name for name, _ in jaxinternals.compile_config()}
    assert read - {"jax_compilation_cache_dir"} <= present
    # The 0.11.1 change: the "effort" options are gone, the "level" ones stay.
    old_names = {"jax_exec_time_optimization_effort", "jax_memory_fitting_effort"}
    if JAX_RELEASE < (0, 11, 1):
        assert old_names <= present
    else:
        assert not old_names & present
    assert {"jax_optimization_level", "jax_memory_fitting_level"} <= present


def test_platform_version_is_part_of_the_runtime() -> None:
    version = jaxinternals.platform_version(jax.devices()[0])
    assert isinstance(version, str) and version


def test_serialized_executables_load_and_run_in_a_fresh_process_after_lapack_init(tmp_path: Path) -> None:
    """serialize_executable round trip, with LAPACK (QR) in the program: a process that lowers
    nothing runs it once `initialize_lapack` has filled LAPACK's table."""
    writer = r"""
import json, pickle, sys
import jax, jax.numpy as jnp
from jaxcache import jaxinternals
def qr_norm(a):
    return jnp.abs(jnp.linalg.qr(a)[1]).sum()
compiled = jax.jit(qr_norm).lower(jax.ShapeDtypeStruct((4, 3), jnp.float32)).compile()
payload = jaxinternals.serialize(compiled)
open(sys.argv[1], "wb").write(pickle.dumps(payload))
a = jnp.arange(12.0, dtype=jnp.float32).reshape(4, 3) + jnp.eye(4, 3)
print(json.dumps({"value": float(compiled(a))}))
"""
    reader = r"""
import json, pickle, sys
import jax, jax.numpy as jnp, numpy as np
from jaxcache import jaxinternals
payload, in_tree, out_tree = pickle.loads(open(sys.argv[1], "rb").read())
jaxinternals.initialize_lapack()
loaded = jaxinternals.deserialize(payload, in_tree, out_tree, [jax.devices()[0]])
a = np.arange(12.0, dtype=np.float32).reshape(4, 3) + np.eye(4, 3, dtype=np.float32)
print(json.dumps({"value": float(loaded(a)), "scipy.linalg": "scipy.linalg" in sys.modules,
                  "tables": "scipy.linalg.cython_lapack" in sys.modules}))
"""
    path = str(tmp_path / "qr.pickle")
    wrote = _run(writer, path)
    read = _run(reader, path)
    assert read["value"] == pytest.approx(wrote["value"], rel=1e-6)
    assert read["tables"] and not read["scipy.linalg"]  # the two table modules, not all of scipy.linalg


def test_a_missing_touchpoint_warns_once_naming_the_feature() -> None:
    code = r"""
import json, warnings
from jax._src import config
del config.trace_context  # a JAX without it
from jaxcache import executables, jaxinternals
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    envs = [executables.environment(), executables.environment()]
    jaxinternals.feature_off("something", "twice")
    jaxinternals.feature_off("something", "twice")
print(json.dumps({"envs": envs, "warnings": [str(w.message) for w in caught
                                                if issubclass(w.category, jaxinternals.TouchpointWarning)]}))
"""
    out = _run(code)
    assert out["envs"] == [None, None]  # the store is off: its key could not cover the traced program
    assert len(out["warnings"]) == 2, out["warnings"]
    assert out["warnings"][0].startswith("jaxcache: the executable store is off with jax ")
    assert "trace_context" in out["warnings"][0]
    assert out["warnings"][1].startswith("jaxcache: something is off")


KEY_PARTS_PROGRAM = r"""
import json, logging, sys
""" + PLAIN_CACHE + r"""
import threading
import jax.numpy as jnp
from jaxcache import compilelog, jaxinternals

records, backends = [], []
compilelog.listen_records(jaxinternals.CACHE_KEY_LOGGER, lambda r: records.append(
    [r.thread == threading.get_ident()] + list(jaxinternals.classify_key_record(r) or [None])))
compilelog.listen_records(jaxinternals.LOWERING_LOGGER, lambda r: records.append(
    [True] + list(jaxinternals.classify_key_record(r) or [None])))

def at_event(kind, module, value):
    if kind in ("miss", "write"):
        backend = jaxinternals.compiling_backend()
        backends.append([kind, value, getattr(backend, "platform", None), len(backend.devices()) if backend else None])
compilelog.listen(at_event)
jax.jit(lambda x: jnp.cos(x) @ x)(jnp.ones((3, 3))).block_until_ready()
print(json.dumps({"records": records, "backends": backends}))
"""


def test_key_parts_are_logged_in_order_and_add_up_to_the_key(tmp_path: Path) -> None:
    """What `jaxcache explain` records: each of JAX's eight key parts, hashed alone and then
    cumulatively, whose last running hash is the key; the XLA flags; the lowered arguments;
    the compiling backend at a miss and a write."""
    out = _run(KEY_PARTS_PROGRAM, str(tmp_path), "--xla_cpu_enable_fast_math=false")
    records = out["records"]
    assert all(same_thread for same_thread, *_ in records), records
    lowered = [r for r in records if r[1] == "lowering"]
    # jit(<lambda>) from jax 0.7, <lambda> before: the same letters as the key's jit__lambda, but "jit".
    assert [(name, sig) for _, _, name, sig in lowered if sig == "(float32[3,3])"] in (
        [("jit(<lambda>)", "(float32[3,3])")], [("<lambda>", "(float32[3,3])")]), lowered
    parts = [r[2] for r in records if r[1] == "part"]
    totals = [(r[2], r[3]) for r in records if r[1] == "total"]
    assert tuple(parts[: len(jaxinternals.KEY_PARTS)]) == jaxinternals.KEY_PARTS, parts
    assert tuple(name for name, _ in totals[: len(jaxinternals.KEY_PARTS)]) == jaxinternals.KEY_PARTS
    misses = [b for b in out["backends"] if b[0] == "miss"]
    keys = {b[1][-64:] for b in misses}
    final = {hex_ for name, hex_ in totals if name == jaxinternals.KEY_PARTS[-1]}
    assert keys <= final, (keys, final)  # the running hash after the last part is the key
    assert "--xla_cpu_enable_fast_math=false" in [r[2] for r in records if r[1] == "flag"]
    assert {(b[0], b[2], b[3]) for b in out["backends"]} >= {("miss", "cpu", 1), ("write", "cpu", 1)}
