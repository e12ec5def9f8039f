"""This node, and whether it can ever hit an object a manifest describes.

Everything here is found without importing JAX (a pull before every job must
be cheap): the installed jaxlib from its metadata, the compression JAX will
use from whether ``zstandard`` is importable, the platforms from
``JAX_PLATFORMS`` or the plugins installed, the CPU fingerprint the executable
store keys on, and the folder path this node's keys carry (see
`jaxcache.jaxformat.path_in_key`).

A verdict is cautious one way only: an object is skipped only when a fact
recorded about it proves it can never be hit here. Where nothing is known
(an entry written without jaxcache has no recorded platform), it is pulled:
a useless object costs bytes, a wrongly skipped one costs a compile.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxcache import jaxformat, provenance
from jaxcache.configuration import gpu_plugin_installed, resolve_xla_caches
from jaxcache.errors import JaxCacheError
from jaxcache.fleet.manifest import Manifest, ObjectRecord

# Backend names as JAX and its plugins spell them, by the family a node has or lacks.
_FAMILIES = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


def platform_family(platform: str | None) -> str | None:
    return None if platform is None else _FAMILIES.get(platform.lower(), platform.lower())


@dataclass(frozen=True)
class Node:
    """What decides, on this node, which objects can be hit.

    Attributes:
        jaxlib: the installed jaxlib version.
        jax: the installed jax version, when known.
        compression: ``zstd`` when ``zstandard`` is importable (JAX then uses it), else ``zlib``.
        platforms: the platform families this node can run (``cpu``, ``gpu``, ``tpu``).
        cpu: the host CPU fingerprint stored executables are keyed on.
        keyed_path: the folder path this node's keys carry, or None when its keys have none.
        jax_dir: the folder JAX writes into here.
    """

    jaxlib: str
    jax: str | None
    compression: str
    platforms: frozenset[str]
    cpu: str
    keyed_path: str | None
    jax_dir: Path

    def as_dict(self) -> dict[str, Any]:
        return {"jaxlib": self.jaxlib, "jax": self.jax, "compression": self.compression,
                "platforms": sorted(self.platforms), "cpu": self.cpu, "keyed_path": self.keyed_path,
                "jax_dir": str(self.jax_dir)}


def this_node(jax_dir: Path, *, xla_caches: str = "auto", layout: str = "versioned",
              env: dict[str, str] | None = None) -> Node:
    """This node's profile for a cache folder.

    Args:
        jax_dir: the folder JAX writes into (as ``jax_compilation_cache_dir`` names it).
        xla_caches, layout: the settings, which decide whether the folder path is in the key.
        env: the environment (default ``os.environ``).

    Raises:
        JaxCacheError: jaxlib is not installed.
    """
    env = dict(os.environ) if env is None else env
    versions = provenance.installed_versions()
    if versions is None:
        raise JaxCacheError("jaxlib is not installed in this environment")
    sub_caches = resolve_xla_caches(xla_caches, layout)
    keyed = jaxformat.path_in_key(versions.jaxlib) and sub_caches != "none"
    return Node(
        jaxlib=versions.jaxlib, jax=versions.jax,
        compression=jaxformat.ZSTD if jaxformat.zstd_available() else jaxformat.ZLIB,
        platforms=_platforms(env), cpu=host_cpu(), keyed_path=str(jax_dir) if keyed else None, jax_dir=jax_dir,
    )


def host_cpu() -> str:
    """The CPU fingerprint in the executable store's keys (the same function computes both)."""
    from jaxcache.executables import _host_cpu  # no JAX imported: it reads /proc/cpuinfo

    return _host_cpu()


def _platforms(env: dict[str, str]) -> frozenset[str]:
    chosen = env.get("JAX_PLATFORMS", "").strip()
    if chosen:
        return frozenset(f for f in (platform_family(p.strip()) for p in chosen.split(",")) if f)
    found = {"cpu"}
    if gpu_plugin_installed():
        found.add("gpu")
    if importlib.util.find_spec("libtpu") is not None:
        found.add("tpu")
    return frozenset(found)


def version_verdict(manifest: Manifest, node: Node) -> str | None:
    """Why none of a manifest's objects can be hit here, or None."""
    if manifest.jaxlib != node.jaxlib:
        return f"for jaxlib {manifest.jaxlib}; this node has {node.jaxlib} (every key hashes the version)"
    return None


def verdict(record: ObjectRecord, node: Node, *, path_in_key: bool) -> str | None:
    """Why this node can never hit ``record``, or None when it may.

    Args:
        record: the object.
        node: this node.
        path_in_key: whether the manifest's jaxlib hashes the folder path into keys.
    """
    family = platform_family(record.platform)
    if family is not None and family not in node.platforms:
        return f"compiled for {record.platform}; this node runs {', '.join(sorted(node.platforms))}"
    if record.kind == "executable":
        if family == "cpu" and record.cpu is not None and record.cpu != node.cpu:
            return "compiled for another CPU (its key holds the CPU features)"
        return None
    if record.compression is not None and record.compression != node.compression:
        return (f"compressed with {record.compression}; JAX here uses {node.compression} "
                "(the compressor is in the key)")
    if path_in_key and record.keyed_path_known and record.keyed_path != node.keyed_path:
        theirs = record.keyed_path or "no folder path (XLA's sub-caches off)"
        ours = node.keyed_path or "no folder path"
        return f"its key holds {theirs}; this node's keys hold {ours}"
    return None
