"""Parsing sizes ("2GB", "512MiB") and durations ("30d", "12h30m") given by people."""

from __future__ import annotations

import re
from datetime import timedelta

from jaxcache.errors import UsageError

# Decimal units as in ccache and humanize's default; "i" forms are binary.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]+)")


def parse_size(text: str | int) -> int:
    """Parses a size such as ``2GB``, ``1.5GiB``, ``500M`` or ``1048576`` into bytes.

    Raises:
        UsageError: the text is not a size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"size {text} must not be negative")
        return text
    match = _SIZE_RE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise UsageError(
            f"invalid size {text!r}: use a number with an optional unit, e.g. 500MB, 2GB, 1.5GiB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> timedelta:
    """Parses a duration such as ``30d``, ``12h``, ``1w2d`` or ``90min``.

    Raises:
        UsageError: the text is not a duration.
    """
    compact = str(text).strip()
    parts = _DURATION_PART_RE.findall(compact)
    if any(u == "M" for _, u in parts):  # minutes to some, months to others: refuse to guess
        raise UsageError(f"ambiguous duration {text!r}: 'M' could be minutes or months; "
                         "use 'min' for minutes, or days ('30d')")
    consumed = "".join(f"{n}{u}" for n, u in parts)
    if not parts or consumed != compact.replace(" ", "") or any(
        u.lower() not in _DURATION_UNITS for _, u in parts
    ):
        raise UsageError(
            f"invalid duration {text!r}: use a number with a unit (s, m, h, d, w), e.g. 30d or 12h"
        )
    seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise UsageError(f"duration {text!r} is too long") from None
