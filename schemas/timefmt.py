"""Timestamps on the wire: RFC 3339 strings or integer epoch milliseconds in, RFC 3339 UTC out."""
from __future__ import annotations

import functools
import math
from datetime import datetime, timezone

# Plausible range for epoch milliseconds: 2000-01-01 .. 2100-01-01.
MIN_EPOCH_MS = 946_684_800_000
MAX_EPOCH_MS = 4_102_444_800_000


def parse_ts(value: object) -> float:
    """Epoch seconds for an RFC 3339 string or integer epoch milliseconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"ts={value!r} is a boolean, expected an RFC 3339 string or integer epoch milliseconds")
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value <= MAX_EPOCH_MS:
            raise ValueError(f"ts={value} epoch milliseconds is outside years 2000-2100")
        return value / 1000.0
    if isinstance(value, str):
        text = value.strip()
        if "T" not in text.upper():
            raise ValueError(f"ts={value!r} is not an RFC 3339 date-time (e.g. 2026-11-30T12:00:00Z)")
        try:
            dt = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"ts={value!r} is not an RFC 3339 date-time (e.g. 2026-11-30T12:00:00Z)") from None
        if dt.tzinfo is None:
            raise ValueError(f"ts={value!r} has no UTC offset; RFC 3339 requires 'Z' or '+hh:mm'")
        return dt.timestamp()
    raise ValueError(f"ts={value!r} must be an RFC 3339 string or integer epoch milliseconds")


def format_ts(epoch_s: float) -> str:
    """RFC 3339 UTC string (millisecond precision) for epoch seconds.

    What `datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds")` gives
    (microseconds rounded half to even, then cut to milliseconds), with the date and time of day
    cached per second: the pair stage formats two timestamps per reported crossing.
    """
    if not epoch_s >= 0:
        return _format_ts_slow(epoch_s)
    frac, whole = math.modf(epoch_s)
    us = round(frac * 1e6)
    second = int(whole)
    if us >= 1_000_000:
        second, us = second + 1, us - 1_000_000
    return f"{_second_text(second)}.{us // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(second: int) -> str:
    return datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _format_ts_slow(epoch_s: float) -> str:
    dt = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
