"""What a worker sent and rejected since it started, counted where it happens (for /metrics).

Ingest outcomes (received, accepted, rejected, dropped by consent) are counted once, in the
counters table (streams/plumbing/counters.py); time per stage in streams/plumbing/bulk.py. These
are the counts that exist nowhere else: records handed to the producer per topic (crossings
emitted, erasure receipts), statistics windows published, and dead letters by reason.
"""
from __future__ import annotations

from collections import Counter, deque

import faust

RECENT_WINDOWS = 4096  # (topic, window start) pairs remembered to count each window once


class Tallies:
    """Per-worker counts since start: records sent per topic, windows published, rejections by reason."""

    def __init__(self, window_topics: frozenset[str] = frozenset()) -> None:
        self.window_topics = window_topics
        self.sent: Counter[str] = Counter()
        self.windows: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self._seen: set[tuple[str, bytes]] = set()
        self._order: deque[tuple[str, bytes]] = deque()

    def count_sent(self, topic: str, n: int = 1, key: bytes | None = None) -> None:
        """Count n records handed to the producer for `topic`; a statistics key also marks its window."""
        self.sent[topic] += n
        if key is not None and topic in self.window_topics:
            self._note_window(topic, key.split(b"|", 1)[0])

    def count_rejected(self, topic: str, reason: str) -> None:
        """Count one dead letter of `topic` with this reason code."""
        self.rejected[(topic, reason)] += 1

    def _note_window(self, topic: str, window: bytes) -> None:
        slot = (topic, window)
        if slot in self._seen:
            return
        self.windows[topic] += 1
        self._seen.add(slot)
        self._order.append(slot)
        if len(self._order) > RECENT_WINDOWS:
            self._seen.discard(self._order.popleft())


def tallies(app: faust.App) -> Tallies:
    """The app's tallies (made on first use; one per worker process)."""
    found = getattr(app, "_tallies", None)
    if found is None:
        found = app._tallies = Tallies()
    return found
