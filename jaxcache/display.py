"""Formatting for people: humanized sizes and ages, aligned tables. Used only by the CLI."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone

import humanize


def size(n: int) -> str:
    return humanize.naturalsize(n, binary=True, format="%.1f")


def ago(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return "-"
    now = time.time() if now is None else now
    return humanize.naturaltime(max(0.0, now - timestamp))


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = ()) -> str:
    """An aligned plain-text table; columns in ``right`` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 kernel``, ``2 kernels``; ``plural`` where adding an s is wrong (``entries``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
