"""Event-time progress of a stream fed by several upstream partitions: the one clock of the core.

Progress is the largest event time seen or, when the clock is given its sources (the upstream
partitions that feed it), the smallest of the sources' largest event times: a source that lags
behind the others, or has sent nothing yet, holds progress back, so its events are not judged late
while it catches up. Events and progress markers of other sources count for nothing then.

Guarantees the tests hold (tests/unit/geo/test_clock.py): progress never decreases; with sources it
equals the min over sources of their max event time; `progress_before_each` gives, for a batch,
what `progress` read before each event fed one by one would give; a progress marker (`advance`) is
an event of that time, nothing more. Users: `CellDetector` (geo.crossings) and `WindowedDistinct`
(anonymizers.windows) subtract their lateness from it.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

Progress = tuple[tuple[Hashable, float], ...]  # (source, its max event time); (None, max seen) without sources


class EventClock:
    """Event-time progress: the slowest source's max event time, or the max seen without sources."""

    __slots__ = ("_source_max", "_max", "_progress")

    def __init__(self, sources: Iterable[Hashable] = ()) -> None:
        self._source_max: dict[Hashable, float] = {s: -math.inf for s in sources}
        self._max = -math.inf  # largest event time seen, from any source
        self._progress = -math.inf

    @property
    def progress(self) -> float:
        """Event time every source has reached (-inf: some source has sent nothing yet)."""
        return self._progress

    @property
    def max_seen(self) -> float:
        """Largest event time seen, from any source."""
        return self._max

    def observe(self, source: Hashable, ts: float) -> float:
        """An event of time ts (a finite number) from `source`; returns progress after it.

        A source the clock was not given counts only for max_seen.
        """
        if ts > self._max:
            self._max = ts
            if not self._source_max:
                self._progress = ts
        src = self._source_max
        if src:
            old = src.get(source)
            if old is not None and ts > old:
                src[source] = ts
                if old == self._progress:  # the slowest source moved: progress may too
                    self._progress = min(src.values())
        return self._progress

    # A progress marker ("`source` has reached ts", for a source whose events all go elsewhere) is
    # an event of that time: the stateful users rely on the two being the same (property-tested).
    advance = observe

    def progress_before_each(self, ts: np.ndarray, sources: Sequence[Hashable] | None = None) -> np.ndarray:
        """Progress just before each event of a batch (ts[i] from sources[i]), then observe them all."""
        src_max = self._source_max
        if not src_max:
            seen = np.maximum.accumulate(np.concatenate([[self._max], ts]))
            self._max = self._progress = float(seen[-1])
            return seen[:-1]
        if ts.size:
            self._max = max(self._max, float(ts.max()))
        names = list(src_max)
        slot = {s: j for j, s in enumerate(names)}
        rows = np.asarray([slot.get(s, -1) for s in sources] if sources is not None else [-1] * ts.size,
                          dtype=np.int64)
        known = np.flatnonzero(rows >= 0)
        highs = np.full((len(names), ts.size + 1), -math.inf)
        highs[:, 0] = [src_max[s] for s in names]
        highs[rows[known], known + 1] = ts[known]
        highs = np.maximum.accumulate(highs, axis=1)
        for j, s in enumerate(names):
            src_max[s] = float(highs[j, -1])
        slowest = highs.min(axis=0)
        self._progress = float(slowest[-1])
        return slowest[:-1]

    def source_progress(self) -> dict[Hashable, float]:
        """Each source's max event time (-inf: nothing from it yet); empty without sources."""
        return dict(self._source_max)

    def snapshot(self) -> Progress:
        """What progress is made of: ((source, max ts), ...), or ((None, max seen),) without sources."""
        return tuple(self._source_max.items()) if self._source_max else ((None, self._max),)

    def restore(self, progress: Iterable[tuple[Hashable, float]]) -> None:
        """Move this clock on to a snapshot()'s progress (never back): each finite entry is observed."""
        for source, ts in progress:
            if math.isfinite(ts):
                self.observe(source, float(ts))
