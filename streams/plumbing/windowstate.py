"""Window state of the statistics stages, kept in a Faust table so a restarted worker resumes it.

The pure `WindowedDistinct` does the windowing; this adapter mirrors each new
(window, key, member) into a changelogged table and rebuilds the object from it
after a restart, and remembers which windows were published so they are not
published twice. With `every_window`, it also closes the windows in which a partition saw nothing
(differential privacy over a declared area publishes every window, empty or not: whether a window
appears must not depend on whether anyone was there).
"""
from __future__ import annotations

import math

from anonymizers.windows import ClosedWindow, WindowedDistinct, window_start
from streams.plumbing.partitions import PartitionStates

SEP = "\x1f"


class TableBackedWindows:
    """Per-partition WindowedDistinct objects whose content survives restarts via Faust tables."""

    def __init__(self, topic_name: str, members_table, published_table, size_s: float, lateness_s: float,
                 sources: range, every_window: bool = False, max_empty: int = 48):
        self.members = members_table  # "p|ws|key|member" -> 1
        self.published = published_table  # "p|ws" -> True; with every_window also "p|last" -> latest closed ws
        self.size_s, self.lateness_s, self.sources = size_s, lateness_s, sources
        # every_window: closes empty windows too, at most max_empty of them at once (the latest: after
        # a long stop, what the raw topics no longer hold is not filled in).
        self.every_window, self.max_empty = every_window, max_empty
        # One WindowedDistinct per partition of the stage topic, rebuilt from the tables when a
        # partition is first used on this worker (register it with the worker's Ownership).
        self.states: PartitionStates[WindowedDistinct] = PartitionStates(topic_name, self._restore)

    def _restore(self, p: int) -> WindowedDistinct:
        wd = WindowedDistinct(self.size_s, self.lateness_s, sources=self.sources)
        prefix = f"{p}{SEP}"
        for k in list(self.members.keys()):
            if k.startswith(prefix):
                # The key may hold SEP itself (a connection group joins its attributes with it);
                # the member (a pseudonym) never does: split it off the end.
                head, member = k.rsplit(SEP, 1)
                _, ws, key = head.split(SEP, 2)
                if not self.published.get(f"{p}{SEP}{ws}"):
                    wd.add(float(ws), key, member)
        return wd

    def of(self, p: int) -> WindowedDistinct:
        """The window state of partition p (rebuilt from the table on first use)."""
        return self.states.get(p)

    def add(self, p: int, ts: float, key: str, member: str, source: int) -> str:
        """Add member under key at ts, from upstream partition `source`; "ok" or "late"."""
        ws = window_start(ts, self.size_s)
        if self.published.get(f"{p}{SEP}{ws:.0f}"):
            return "late"
        result = self.of(p).add(ts, key, member, source=source)
        if result == "ok":
            k = f"{p}{SEP}{ws:.0f}{SEP}{key}{SEP}{member}"
            if k not in self.members:
                self.members[k] = 1
        return result

    def advance(self, p: int, source: int, ts: float) -> None:
        """Upstream partition `source` has reached ts (a progress marker); close(p) says what it closes."""
        self.of(p).advance_source(source, ts)

    def close(self, p: int) -> list[ClosedWindow]:
        """Windows of partition p that are now complete; marked published and dropped from the table."""
        closed = self.of(p).closed()
        if self.every_window:
            closed = self._with_empty(p, closed)
        out = []
        for window in closed:
            marker = f"{p}{SEP}{window.start:.0f}"
            if self.published.get(marker):
                continue
            self.published[marker] = True
            for key, members in window.members.items():
                for member in members:
                    self.members.pop(f"{p}{SEP}{window.start:.0f}{SEP}{key}{SEP}{member}", None)
            out.append(window)
        return out

    def _with_empty(self, p: int, closed: list[ClosedWindow]) -> list[ClosedWindow]:
        """closed, plus an empty window for each complete window of p since the last one closed."""
        watermark = self.of(p).watermark
        if watermark is None:
            return closed
        latest = math.floor((watermark - self.lateness_s) / self.size_s) * self.size_s - self.size_s
        last = self.published.get(f"{p}{SEP}last")
        first = last + self.size_s if last is not None else min([w.start for w in closed] + [latest])
        first = max(first, latest - (self.max_empty - 1) * self.size_s)
        have = {w.start for w in closed}
        empty = [ClosedWindow(ws, ws + self.size_s, {}) for ws in _starts(first, latest, self.size_s) if ws not in have]
        if last is None or latest > last:
            self.published[f"{p}{SEP}last"] = latest
        return sorted(closed + empty, key=lambda w: w.start)

    def purge(self, p: int, members: set[str]) -> int:
        """Forget these members in partition p's open windows; returns memberships removed."""
        removed = sum(self.of(p).purge(m) for m in members)
        prefix = f"{p}{SEP}"
        for k in [k for k in self.members.keys() if k.startswith(prefix) and k.rsplit(SEP, 1)[1] in members]:
            self.members.pop(k, None)
        return removed

    def partitions(self) -> dict[int, WindowedDistinct]:
        """The window state of each partition used on this worker so far."""
        return dict(self.states.items())

    def memberships_of(self, members: set[str]) -> int:
        """How many (window, key) memberships these members hold in memory (for audits)."""
        return sum(wd.memberships_of(m) for wd in self.states.values() for m in members)


def _starts(first: float, last: float, size_s: float) -> list[float]:
    """Window starts from first to last (inclusive), size_s apart."""
    return [first + i * size_s for i in range(int(round((last - first) / size_s)) + 1)] if last >= first else []
