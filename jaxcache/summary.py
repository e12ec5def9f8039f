"""Aggregates of a scan for ``jaxcache inspect``: by version, platform and function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxcache.scan import CacheEntry, CacheInfo

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Group:
    """Entries and bytes of one group (a version, a platform, a module)."""

    entries: int
    bytes: int
    allocated_bytes: int

    def as_dict(self) -> dict[str, int]:
        return {"entries": self.entries, "bytes": self.bytes, "allocated_bytes": self.allocated_bytes}


@dataclass(frozen=True)
class Summary:
    """What ``inspect`` reports about a cache."""

    cache_dir: Path
    entries: int
    bytes: int
    allocated_bytes: int
    by_version: dict[str, Group]
    by_platform: dict[str, Group]
    by_module: dict[str, Group]
    installed_version: str | None
    other_version_bytes: int
    other_version_entries: int
    orphan_atimes: int
    without_atime: int
    other_files: int
    oldest_written: float | None
    newest_written: float | None
    least_recent_use: float | None
    most_recent_use: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "cache_dir": str(self.cache_dir),
            "entries": self.entries,
            "bytes": self.bytes,
            "allocated_bytes": self.allocated_bytes,
            "by_version": {k: g.as_dict() for k, g in self.by_version.items()},
            "by_platform": {k: g.as_dict() for k, g in self.by_platform.items()},
            "by_module": {k: g.as_dict() for k, g in self.by_module.items()},
            "installed_version": self.installed_version,
            "other_version_entries": self.other_version_entries,
            "other_version_bytes": self.other_version_bytes,
            "orphan_atimes": self.orphan_atimes,
            "without_atime": self.without_atime,
            "other_files": self.other_files,
            "oldest_written": self.oldest_written,
            "newest_written": self.newest_written,
            "least_recent_use": self.least_recent_use,
            "most_recent_use": self.most_recent_use,
        }


def _group(entries: tuple[CacheEntry, ...], key: Callable[[CacheEntry], str]) -> dict[str, Group]:
    totals: dict[str, list[int]] = {}
    for entry in entries:
        t = totals.setdefault(key(entry), [0, 0, 0])
        t[0] += 1
        t[1] += entry.bytes
        t[2] += entry.allocated_bytes
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return {k: Group(*v) for k, v in ordered}


def summarize(info: CacheInfo, *, installed_version: str | None) -> Summary:
    """Totals of a scan, grouped by version, platform and module name."""
    entries = info.entries
    others = [e for e in entries if e.version is not None and e.version != installed_version]
    written = [e.written for e in entries]
    used = [e.recency for e in entries]
    return Summary(
        cache_dir=info.root,
        entries=len(entries),
        bytes=info.total_bytes,
        allocated_bytes=info.allocated_bytes,
        by_version=_group(entries, lambda e: e.version or UNKNOWN),
        by_platform=_group(entries, lambda e: e.platform or UNKNOWN),
        by_module=_group(entries, lambda e: e.module),
        installed_version=installed_version,
        other_version_entries=len(others),
        other_version_bytes=sum(e.bytes for e in others),
        orphan_atimes=len(info.orphan_atimes),
        without_atime=sum(1 for e in entries if not e.has_atime),
        other_files=info.other_files,
        oldest_written=min(written, default=None),
        newest_written=max(written, default=None),
        least_recent_use=min(used, default=None),
        most_recent_use=max(used, default=None),
    )
