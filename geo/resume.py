"""Where a streaming detector's state can be rebuilt from, after a restart or a move to another worker.

A `CellDetector` holds the live pings of its partition in memory only. Its input (a partition of
the crossing-cells topic) is a log, so rather than copying the state somewhere, a worker remembers
which stretch of that log the state comes from: a `ResumePoint` says "the state after input offset
`at` is what you get by starting from these watermark inputs (`progress`) and feeding the records
from offset `low` up to `at`". Replaying them rebuilds the same state, pings, watermark and late
decisions alike, because the detector is deterministic in arrival order.

`ReplayLog` keeps, per handled stretch of records, its first offset, the newest ping among them and
the detector's progress before them. Once the newest ping of the oldest stretch is older than the
detector's horizon (nothing older can match a ping that is not late), that stretch is no longer
needed and `low` moves past it.

A worker saves points as it goes (a few a second at most) and, after a crash, resumes from the last
committed offset, which may be older than the newest point: `choose` takes the newest point at or
before the offset the worker resumes from.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from geo.crossings import CellDetector


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """The detector state after input offset `at` = `progress` + the records in [low, at) replayed."""

    at: int
    low: int
    progress: tuple[tuple[Hashable, float], ...]  # (source, its max event time) before record `low`

    def __post_init__(self) -> None:
        if not (0 <= self.low <= self.at):
            raise ValueError(f"resume point with low={self.low} outside [0, at={self.at}]")

    def to_json(self) -> list:
        """[at, low, [[source, ts or None], ...]] (None: nothing seen from that source yet)."""
        return [self.at, self.low, [[s, t if math.isfinite(t) else None] for s, t in self.progress]]

    @classmethod
    def from_json(cls, doc: list) -> "ResumePoint":
        at, low, progress = doc
        return cls(int(at), int(low), tuple((s, -math.inf if t is None else float(t)) for s, t in progress))


@dataclass(slots=True)
class _Stretch:
    first: int
    newest_ts: float
    progress: tuple[tuple[Hashable, float], ...]


class ReplayLog:
    """The stretches of input a detector's state may still hold, oldest first."""

    def __init__(self) -> None:
        self._stretches: deque[_Stretch] = deque()
        self._next: int | None = None  # offset after the last stretch noted

    def note(self, first: int, next_offset: int, progress_before: Iterable[tuple[Hashable, float]],
             newest_ts: float) -> None:
        """Records [first, next_offset) were handled, starting from `progress_before`; their newest ping.

        Records handled again (delivered twice, at least once) count from their first handling: only
        the part after the last offset noted is a new stretch.
        """
        if next_offset < first:
            raise ValueError(f"stretch [{first}, {next_offset}) ends before it starts")
        if self._next is not None and first < self._next:
            if next_offset <= self._next:
                return
            first = self._next
        self._stretches.append(_Stretch(first, newest_ts, tuple(progress_before)))
        self._next = next_offset

    def point(self, horizon: float, progress_now: Iterable[tuple[Hashable, float]]) -> ResumePoint | None:
        """Where to resume after the last stretch noted, forgetting stretches all older than `horizon`.

        horizon: the detector's (`CellDetector.horizon`): no ping older than it can match again.
        """
        if self._next is None:
            return None
        stretches = self._stretches
        while stretches and stretches[0].newest_ts < horizon:
            stretches.popleft()
        if not stretches:
            return ResumePoint(self._next, self._next, tuple(progress_now))
        return ResumePoint(self._next, stretches[0].first, stretches[0].progress)

    def __len__(self) -> int:
        return len(self._stretches)


def choose(points: Sequence[ResumePoint], resume_at: int) -> ResumePoint | None:
    """The newest point a worker resuming at offset `resume_at` can use (its `at` not after it), if any."""
    usable = [p for p in points if p.low <= p.at <= resume_at]
    return max(usable, key=lambda p: p.at) if usable else None


def remember(points: Sequence[ResumePoint], point: ResumePoint, keep: int) -> list[ResumePoint]:
    """`points` plus `point`, keeping the newest `keep` (a crash resumes at most that far back)."""
    return [*points, point][-keep:]


def progress_of(detector: CellDetector) -> tuple[tuple[Hashable, float], ...]:
    """The detector's watermark inputs: each source's max event time (or (None, max ts seen) without sources)."""
    return detector.clock.snapshot()


def restore_progress(detector: CellDetector, progress: Iterable[tuple[Hashable, float]]) -> None:
    """Bring a new detector's watermark inputs to `progress` (from progress_of)."""
    detector.clock.restore(progress)
