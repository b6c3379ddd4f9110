"""Window state of the statistics stages, kept in a Faust table so a restarted worker resumes it.

The pure `WindowedDistinct` does the windowing; this adapter mirrors each new
(window, key, member) into a changelogged table and rebuilds the object from it
after a restart, and remembers which windows were published so they are not
published twice. With `every_window`, it also closes the windows in which a partition saw nothing
(differential privacy over a declared area publishes every window, empty or not: whether a window
appears must not depend on whether anyone was there).

A published window remembers where the stage was when it closed: the stage offset after the message
that closed it, and per upstream input partition the highest input offset handled. An event below
either was handled before the window closed (counted in it, or found late then): it is delivered
again after a fault, as a stage message whose offset was not committed yet, or as an input message
ingest handled again. `add` says "seen" for it, not "late", and no second dead letter goes.
"""
from __future__ import annotations

import math

from faust.streams import current_event

from anonymizers.windows import ClosedWindow, WindowedDistinct, window_start
from streams.plumbing.partitions import PartitionStates

SEP = "\x1f"


class TableBackedWindows:
    """Per-partition WindowedDistinct objects whose content survives restarts via Faust tables."""

    def __init__(self, topic_name: str, members_table, published_table, size_s: float, lateness_s: float,
                 sources: range, every_window: bool = False, max_empty: int = 48):
        self.members = members_table  # "p|ws|key|member" -> 1
        # "p|ws" -> where the stage was when the window closed ({"at": stage offset after, "inputs": {source:
        # input offset}}; True if written before it said); "p|inputs" -> the highest input offset handled per
        # source; with every_window also "p|last" -> latest closed ws
        self.published = published_table
        self.size_s, self.lateness_s, self.sources = size_s, lateness_s, sources
        # every_window: closes empty windows too, at most max_empty of them at once (the latest: after
        # a long stop, what the raw topics no longer hold is not filled in).
        self.every_window, self.max_empty = every_window, max_empty
        # One WindowedDistinct per partition of the stage topic, rebuilt from the tables when a
        # partition is first used on this worker (register it with the worker's Ownership).
        self.states: PartitionStates[WindowedDistinct] = PartitionStates(topic_name, self._restore)
        self._inputs: dict[int, dict[int, int]] = {}  # p -> source -> highest input offset handled (restored too)
        self._inputs_changed: set[int] = set()

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
        self._inputs[p] = {int(s): o for s, o in (self.published.get(f"{p}{SEP}inputs") or {}).items()}
        self._inputs_changed.discard(p)
        return wd

    def of(self, p: int) -> WindowedDistinct:
        """The window state of partition p (rebuilt from the table on first use)."""
        return self.states.get(p)

    def add(self, p: int, ts: float, key: str, member: str, source: int, offset: int | None = None,
            input_offset: int | None = None) -> str:
        """Add member under key at ts, from upstream partition `source`; "ok", "late", or "seen".

        offset: the stage message's (default: the current event's); input_offset: the input message's
        at `source`. "seen": the window closed after this event was handled; it is delivered again.
        """
        wd = self.of(p)
        if input_offset is not None and input_offset > self._inputs[p].get(source, -1):
            self._inputs[p][source] = input_offset
            self._inputs_changed.add(p)
        ws = window_start(ts, self.size_s)
        published = self.published.get(f"{p}{SEP}{ws:.0f}")
        if published:
            return "seen" if _handled_before(published, _offset(offset), source, input_offset) else "late"
        result = wd.add(ts, key, member, source=source)
        if result == "ok":
            k = f"{p}{SEP}{ws:.0f}{SEP}{key}{SEP}{member}"
            if k not in self.members:
                self.members[k] = 1
        return result

    def advance(self, p: int, source: int, ts: float) -> None:
        """Upstream partition `source` has reached ts (a progress marker); close(p) says what it closes."""
        self.of(p).advance_source(source, ts)

    def close(self, p: int, offset: int | None = None) -> list[ClosedWindow]:
        """Windows of partition p that are now complete; marked published and dropped from the table.

        offset: the stage message being handled (default: the current event's); the marker keeps the
        offset after it and the input offsets handled, below which events were handled before it closed.
        """
        closed = self.of(p).closed()
        if self.every_window:
            closed = self._with_empty(p, closed)
        out = []
        offset = _offset(offset)
        inputs = {str(s): o for s, o in sorted(self._inputs[p].items())}
        if p in self._inputs_changed:
            self.published[f"{p}{SEP}inputs"] = inputs
            self._inputs_changed.discard(p)
        for window in closed:
            marker = f"{p}{SEP}{window.start:.0f}"
            if self.published.get(marker):
                continue
            self.published[marker] = {"at": None if offset is None else offset + 1, "inputs": inputs}
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


def _offset(offset: int | None) -> int | None:
    """`offset`, or else the offset of the message being handled (streams.plumbing.bulk.processing), if any."""
    if offset is not None:
        return offset
    event = current_event()
    return None if event is None else event.message.offset


def _handled_before(published, offset: int | None, source: int, input_offset: int | None) -> bool:
    """Whether an event (stage message `offset`, input message `input_offset` at `source`) was handled before
    the window marked `published` closed (a marker written before markers said where: nothing was)."""
    if not isinstance(published, dict):
        return False
    at = published.get("at")
    if offset is not None and at is not None and offset < at:
        return True
    return input_offset is not None and input_offset <= (published.get("inputs") or {}).get(str(source), -1)


def _starts(first: float, last: float, size_s: float) -> list[float]:
    """Window starts from first to last (inclusive), size_s apart."""
    return [first + i * size_s for i in range(int(round((last - first) / size_s)) + 1)] if last >= first else []
