"""Window state of the statistics stages, kept in a Faust table so a restarted worker resumes it.

The pure `WindowedDistinct` does the windowing; this adapter mirrors each new
(window, key, member) into a changelogged table and rebuilds the object from it
after a restart, and remembers which windows were published so they are not
published twice.
"""
from __future__ import annotations

from anonymizers.windows import ClosedWindow, WindowedDistinct, window_start
from streams.plumbing.partitions import PartitionStates

SEP = "\x1f"


class TableBackedWindows:
    """Per-partition WindowedDistinct objects whose content survives restarts via Faust tables."""

    def __init__(self, topic_name: str, members_table, published_table, size_s: float, lateness_s: float,
                 sources: range):
        self.members = members_table  # "p|ws|key|member" -> 1
        self.published = published_table  # "p|ws" -> True
        self.size_s, self.lateness_s, self.sources = size_s, lateness_s, sources
        # One WindowedDistinct per partition of the stage topic, rebuilt from the tables when a
        # partition is first used on this worker (register it with the worker's Ownership).
        self.states: PartitionStates[WindowedDistinct] = PartitionStates(topic_name, self._restore)

    def _restore(self, p: int) -> WindowedDistinct:
        wd = WindowedDistinct(self.size_s, self.lateness_s, sources=self.sources)
        prefix = f"{p}{SEP}"
        for k in list(self.members.keys()):
            if k.startswith(prefix):
                _, ws, key, member = k.split(SEP, 3)
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
        out = []
        for window in self.of(p).closed():
            marker = f"{p}{SEP}{window.start:.0f}"
            if self.published.get(marker):
                continue
            self.published[marker] = True
            for key, members in window.members.items():
                for member in members:
                    self.members.pop(f"{p}{SEP}{window.start:.0f}{SEP}{key}{SEP}{member}", None)
            out.append(window)
        return out

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
