"""Recording what each key JAX computes is made of, so that a miss can be explained.

JAX's key is a SHA-256 over eight parts (``jaxinternals.KEY_PARTS``); at DEBUG
it logs each part's own hash, the XLA flags it includes, and, when it lowers,
the arguments' shapes and dtypes (see `jaxcache.jaxinternals`). A recorder
collects those records per thread, matches them to the key by the running hash
after the last part (which is the key's hex), and, at each miss and each write,
stores the parts' hashes with the cheap values behind them (:class:`Facts` in
`jaxcache.explain`)::

    <version folder>/.jaxcache/keys           one JSON line per entry written: what its key is made of
    <root>/.jaxcache/runs/<run>.jsonl         one JSON line per miss of a run (a header line per process)

A *run* is one `jaxcache run` (its processes share ``JAXCACHE_RUN_ID``), or one
process configured by ``jaxcache.configure()`` (the pytest plugin, a script,
a warm worker). Only the newest `RUNS_KEPT` run files are kept; the keys log
loses an entry's line when `prune` deletes the entry.

Standard library only: the ``jaxcache run`` bootstrap loads this file by path.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __name__.startswith("_jaxcache_bootstrap_"):  # loaded by path, with its siblings, by `jaxcache run`'s bootstrap
    atomic = sys.modules["_jaxcache_bootstrap_atomic"]
    jaxformat = sys.modules["_jaxcache_bootstrap_jaxformat"]
    jaxinternals = sys.modules["_jaxcache_bootstrap_jaxinternals"]
    compilelog = sys.modules["_jaxcache_bootstrap_compilelog"]
    META_DIR_NAME = ".jaxcache"  # jaxcache.index.META_DIR_NAME (tests/test_uses.py checks they agree)
else:
    from jaxcache import atomic, compilelog, jaxformat, jaxinternals
    from jaxcache.index import META_DIR_NAME

KEYS_NAME = "keys"
RUNS_DIR = "runs"
RUN_ID_ENV = "JAXCACHE_RUN_ID"
RECORD_ENV = "JAXCACHE_RECORD_KEYS"  # "0": record no key parts (then `explain` cannot tell what changed)
RUNS_KEPT = 50
_MARKER_NAME = ".jaxcache-version.json"  # provenance.MARKER_NAME: a version folder's root is its parent


def keys_path(folder: Path) -> Path:
    return folder / META_DIR_NAME / KEYS_NAME


def runs_dir(root: Path) -> Path:
    return root / META_DIR_NAME / RUNS_DIR


def cache_root(folder: Path) -> Path:
    """The cache root of the folder JAX writes into (its parent, for a version folder)."""
    return folder.parent if (folder / _MARKER_NAME).exists() else folder


def recording_enabled() -> bool:
    """Key parts are recorded unless ``JAXCACHE_RECORD_KEYS=0`` (its cost: benchmarks/explain_cost.py)."""
    return os.environ.get(RECORD_ENV, "1").strip() != "0"


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"


class KeyPartsRecorder:
    """Collects key parts from JAX's records and stores them at each miss and write."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or os.environ.get(RUN_ID_ENV) or new_run_id()
        self._pending: dict[int, dict[str, Any]] = {}  # thread -> parts and flags of the key being hashed
        self._keys: dict[str, dict[str, Any]] = {}  # key hex -> its parts and flags, until its event
        self._lowered: dict[tuple[int, str], str] = {}  # (thread, module) -> last arguments lowered
        self._lock = threading.Lock()
        self._headed: set[Path] = set()  # roots whose run file has this process's header
        self._facts_cache: dict[str, Any] = {}

    def install(self) -> None:
        compilelog.listen_records(jaxinternals.CACHE_KEY_LOGGER, self.on_record)
        compilelog.listen_records(jaxinternals.LOWERING_LOGGER, self.on_record)
        compilelog.listen(self.on_event)

    def on_record(self, record: logging.LogRecord) -> None:
        found = jaxinternals.classify_key_record(record)
        if found is None:
            return
        kind, name, value = found
        thread = record.thread or 0
        with self._lock:
            if kind == "lowering":
                self._lowered.pop((thread, _plain(name)), None)
                self._lowered[(thread, _plain(name))] = value
                if len(self._lowered) > 4096:
                    self._lowered.pop(next(iter(self._lowered)))
                return
            pending = self._pending.setdefault(thread, {"parts": {}, "flags": []})
            if kind == "part":
                pending["parts"][name] = value
            elif kind == "flag" and name not in pending["flags"]:  # JAX logs them again to hash the part alone
                pending["flags"].append(name)
            elif kind == "total" and name == jaxinternals.KEY_PARTS[-1]:
                self._keys[value] = self._pending.pop(thread)
                if len(self._keys) > 4096:  # keys computed for no event (caching off): forget the oldest
                    self._keys.pop(next(iter(self._keys)))

    def on_event(self, kind: str, module: str, value: Any) -> None:
        if kind not in (compilelog.HIT, compilelog.MISS, compilelog.WRITE):
            return
        folder = compilelog.jax_cache_folder()
        if not folder or "://" in folder:
            return  # none, or a bucket (jaxcache.bucket): the key parts are kept in local folders only
        root = cache_root(Path(folder))
        self._start(root)  # a run that only hits is a run too: `explain --run last` is this one
        if kind == compilelog.HIT:
            return
        key = str(value)
        with self._lock:
            # A miss comes first, then (once compiled) the write of the same key: keep the parts till then.
            parts = self._keys.pop(key[-64:], None) if kind == compilelog.WRITE else self._keys.get(key[-64:])
            thread, name = threading.get_ident(), _plain(module)
            signature = self._lowered.get((thread, name))
            if signature is None and name.startswith("jit"):  # jax < 0.7 logs the bare function name
                signature = self._lowered.get((thread, name[3:]))
        if parts is None:
            if kind == compilelog.MISS:
                jaxinternals.feature_off("explaining misses (jaxcache explain)",
                                         "JAX logged a miss without the key-part records jaxcache reads")
            return
        record = {"key": key, "event": kind, "time": time.time(), "parts": parts["parts"],
                  "facts": self._facts(parts["flags"], signature)}
        try:
            if kind == compilelog.WRITE:
                _append(keys_path(Path(folder)), record)
            else:
                _append(runs_dir(root) / f"{self.run_id}.jsonl", record)
        except OSError:
            pass  # a record is metadata: never worth failing a compile for

    def _start(self, root: Path) -> None:
        """This process's header in its run's file, once."""
        if root in self._headed:
            return
        self._headed.add(root)
        try:
            start_run(root, self.run_id, sys.argv)
        except OSError:
            pass

    def _facts(self, flags: list[str], signature: str | None) -> dict[str, Any]:
        facts: dict[str, Any] = {"xla_flags": flags, "signature": signature}
        backend = jaxinternals.compiling_backend()
        if backend is not None:
            facts["platform"] = backend.platform
            try:
                facts["platform_version"] = str(backend.platform_version)
                devices = backend.devices()
                facts["device_count"] = len(devices)
                facts["device_kind"] = devices[0].device_kind if devices else None
            except Exception:  # noqa: BLE001 (a fact this client does not expose stays unknown)
                pass
        jax = sys.modules.get("jax")
        if jax is not None:
            facts["x64"] = bool(getattr(jax.config, "jax_enable_x64", False))
        if "jaxlib" not in self._facts_cache:
            try:
                from importlib.metadata import version

                self._facts_cache["jaxlib"] = version("jaxlib")
            except Exception:  # noqa: BLE001
                self._facts_cache["jaxlib"] = None
        facts["jaxlib"] = self._facts_cache["jaxlib"]
        facts["compression"] = "zstandard" if jaxformat.zstd_available() else "zlib"
        return facts


def _plain(name: str) -> str:
    """A function's name as lowering logs it (``jit(<lambda>)``; ``<lambda>`` before jax 0.7)
    and as its key has it (``jit__lambda``), reduced to what both keep: letters and digits."""
    return "".join(c for c in name if c.isalnum())


def start_run(root: Path, run_id: str, argv: list[str]) -> None:
    """Adds a process's header line to a run's file (creating it, and forgetting the oldest runs).

    `jaxcache run` starts its run before the command does, so a run that missed
    nothing is recorded too; a process configured by ``configure()`` starts one at its first miss.
    """
    path = runs_dir(root) / f"{run_id}.jsonl"
    fresh = not path.exists()
    _append(path, {"run": run_id, "pid": os.getpid(), "argv": list(argv)[:20], "start": time.time()})
    if fresh:
        _forget_old_runs(path.parent)


def _append(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended in one write (0o666 less the umask: a team cache's members append too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def _forget_old_runs(folder: Path) -> None:
    try:
        runs = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in runs[:-RUNS_KEPT]:
        old.unlink(missing_ok=True)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # torn by a kill
        if isinstance(item, dict):
            out.append(item)
    return out


def load_keys(folder: Path) -> dict[str, dict[str, Any]]:
    """Key -> what its entry's key was made of, for the entries written with jaxcache in the loop."""
    return {item["key"]: item for item in _read_lines(keys_path(folder)) if isinstance(item.get("key"), str)}


def forget_keys(folder: Path, keys: Any) -> None:
    """Drops the lines of deleted entries (call under the folder's lock, after deleting)."""
    gone = set(keys)
    path = keys_path(folder)
    if not gone or not path.exists():
        return
    try:
        with open(path, "rb") as f:
            data = f.read()
            mode = os.fstat(f.fileno()).st_mode & 0o7777
    except OSError:
        return
    complete = data[: data.rfind(b"\n") + 1]
    kept = [line for line in complete.splitlines(keepends=True)
            if _key_of(line) not in gone]
    try:
        atomic.rewrite_log(path, b"".join(kept), read_bytes=len(complete), mode=mode)
    except OSError:
        pass


def _key_of(line: bytes) -> str | None:
    try:
        return json.loads(line).get("key")
    except (ValueError, AttributeError):
        return None


def list_runs(root: Path) -> list[Path]:
    """The run files of a cache, oldest first."""
    try:
        return sorted(runs_dir(root).glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))
    except OSError:
        return []


def load_run(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run file's headers (one per process) and its misses."""
    lines = _read_lines(path)
    return [i for i in lines if "run" in i], [i for i in lines if i.get("event") == "miss"]
