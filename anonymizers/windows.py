"""Tumbling event-time windows of distinct members per key, as a pure object with explicit state.

``WindowedDistinct`` follows the bytewax/quix-streams shape: feed it items with
``add``, ask it which windows are complete with ``closed`` (or ``advance`` /
``flush``), and persist it with ``snapshot`` / ``restore``. It never sends
anything: the caller decides what to publish from the closed windows (for
example ``regions.publish_regions`` for location, key = base H3 cell and
member = pseudonym; ``kanon.publish_groups`` for connection statistics,
key = group tuple).

Watermark = event-time progress (geo.clock.EventClock: the largest event time
seen or, given the upstream sources, the slowest source's), or what ``advance``
was given if that is later; it never moves back. A window
[start, end) closes when ``end + lateness_s <= watermark``; an item for a
window that is closed by that rule is refused as "late", whether or not the
window was already collected, so a window's content never changes after it
could have been published.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any, Literal, NamedTuple

from geo.clock import EventClock

SNAPSHOT_VERSION = 1


def _check_ts(ts: float, name: str = "ts") -> float:
    """Return ts if it is a finite number, else raise ValueError naming it."""
    try:
        if not isinstance(ts, bool) and math.isfinite(ts):
            return ts
    except TypeError:
        pass
    raise ValueError(f"{name}={ts!r} is not a finite epoch-seconds number")


def window_start(ts: float, size_s: float) -> float:
    """Return the start of the tumbling window of size size_s containing ts."""
    _check_ts(ts)
    if not size_s > 0:
        raise ValueError(f"size_s={size_s!r} must be > 0")
    return float(math.floor(ts / size_s) * size_s)


class ClosedWindow(NamedTuple):
    """A complete window: [start, end) and the distinct members seen per key."""

    start: float
    end: float
    members: dict[Hashable, set]


def _encode_key(key: Hashable) -> Any:
    """JSON-able form of a key: tuples become lists."""
    return list(key) if isinstance(key, tuple) else key


def _decode_key(key: Any) -> Hashable:
    """Inverse of _encode_key."""
    return tuple(key) if isinstance(key, list) else key


def _sorted(values: set) -> list:
    """Sort for a deterministic snapshot when the values allow it."""
    try:
        return sorted(values)
    except TypeError:
        return list(values)


class WindowedDistinct:
    """Distinct members per key per tumbling event-time window, with allowed lateness."""

    def __init__(self, size_s: float, lateness_s: float = 0.0, sources: Iterable[Hashable] = ()) -> None:
        if isinstance(size_s, bool) or not isinstance(size_s, (int, float)) or not size_s > 0 or not math.isfinite(size_s):
            raise ValueError(f"size_s={size_s!r} must be a finite number > 0")
        if isinstance(lateness_s, bool) or not isinstance(lateness_s, (int, float)) or not lateness_s >= 0 or not math.isfinite(lateness_s):
            raise ValueError(f"lateness_s={lateness_s!r} must be a finite number >= 0")
        self.size_s = float(size_s)
        self.lateness_s = float(lateness_s)
        self._windows: dict[float, dict[Hashable, set]] = {}
        self._watermark = -math.inf
        # With sources (upstream partitions), progress is the slowest source's max ts, so a source
        # that lags behind the others makes nothing late.
        self._clock = EventClock(sources)

    @property
    def watermark(self) -> float | None:
        """Largest event time seen so far, or None before the first item."""
        return None if self._watermark == -math.inf else self._watermark

    def source_progress(self) -> dict[Hashable, float]:
        """Each upstream partition's event-time progress as seen here (-inf: nothing from it yet)."""
        return self._clock.source_progress()

    def open_windows(self) -> list[float]:
        """Start times of the windows currently held, in order."""
        return sorted(self._windows)

    def add(self, ts: float, key: Hashable, member: Hashable, source: Hashable | None = None) -> Literal["ok", "late"]:
        """Record member under key in ts's window; "late" (and dropped) if that window is closed."""
        _check_ts(ts)
        size = self.size_s
        start = math.floor(ts / size) * size
        if start + size + self.lateness_s <= self._watermark:
            return "late"
        window = self._windows.get(start)
        if window is None:
            window = self._windows[start] = {}
        members = window.get(key)
        if members is None:
            window[key] = {member}
        else:
            members.add(member)
        progress = self._clock.observe(source, ts)
        if progress > self._watermark:
            self._watermark = progress
        return "ok"

    def advance_source(self, source: Hashable, ts: float) -> None:
        """Upstream partition `source` has reached event time ts without an item here.

        A progress marker: a source whose items all go elsewhere does not keep these windows open
        (closed() then returns what it allows). Without sources, the watermark moves to ts.
        """
        _check_ts(ts)
        progress = self._clock.observe(source, ts)  # to the clock, a progress marker is an event of that time
        if progress > self._watermark:
            self._watermark = progress

    def closed(self) -> list[ClosedWindow]:
        """Remove and return, oldest first, the windows with end + lateness <= watermark."""
        horizon = self._watermark - self.lateness_s
        ready = sorted(s for s in self._windows if s + self.size_s <= horizon)
        return [ClosedWindow(s, s + self.size_s, self._windows.pop(s)) for s in ready]

    def advance(self, watermark: float) -> list[ClosedWindow]:
        """Move the watermark forward (never back) without an item, then return closed()."""
        _check_ts(watermark, "watermark")
        if watermark > self._watermark:
            self._watermark = watermark
        return self.closed()

    def flush(self) -> list[ClosedWindow]:
        """Remove and return every open window (end of a bounded input)."""
        ready = sorted(self._windows)
        return [ClosedWindow(s, s + self.size_s, self._windows.pop(s)) for s in ready]

    def purge(self, member: Hashable) -> int:
        """Forget member everywhere (erasure); return the number of (window, key) memberships removed."""
        removed = 0
        for start in list(self._windows):
            window = self._windows[start]
            for key in [key for key, members in window.items() if member in members]:
                window[key].discard(member)
                removed += 1
                if not window[key]:
                    del window[key]
            if not window:
                del self._windows[start]
        return removed

    def memberships_of(self, member: Hashable) -> int:
        """Number of (window, key) memberships of member currently held (for audits)."""
        return sum(member in members for window in self._windows.values() for members in window.values())

    def snapshot(self) -> dict[str, Any]:
        """Return the full state as plain JSON-able data."""
        return {
            "version": SNAPSHOT_VERSION,
            "size_s": self.size_s,
            "lateness_s": self.lateness_s,
            "watermark": self.watermark,
            "windows": [
                [start, [[_encode_key(key), _sorted(members)] for key, members in window.items()]]
                for start, window in sorted(self._windows.items())
            ],
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> WindowedDistinct:
        """Rebuild an object from snapshot() output."""
        if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise ValueError(f"snapshot version={version!r} is not {SNAPSHOT_VERSION}")
        obj = cls(state["size_s"], state["lateness_s"])
        if state["watermark"] is not None:
            obj._watermark = float(_check_ts(state["watermark"], "watermark"))
        for start, entries in state["windows"]:
            obj._windows[float(start)] = {
                _decode_key(key): set(members) for key, members in entries if members
            }
        return obj


def recent_windows(now: float, size_s: float, back_s: float = 2 * 86400) -> list[float]:
    """Starts of every window from `back_s` before now up to the one after now's (for purges, audits)."""
    first = window_start(now - back_s, size_s)
    return [first + i * size_s for i in range(int((now + size_s - first) // size_s) + 1)]
