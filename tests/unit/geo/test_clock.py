"""The event-time clock: one table of cases, then the guarantees its users rely on, as properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.clock import EventClock

INF = math.inf


@pytest.mark.parametrize("sources, events, progress, source_progress", [
    ((), [], -INF, {}),
    ((), [(None, 10.0)], 10.0, {}),
    ((), [(None, 10.0), (None, 5.0)], 10.0, {}),  # never back
    ((), [(7, 10.0), ("x", 12.0)], 12.0, {}),  # without sources, any source counts
    ((0, 1), [(0, 10.0)], -INF, {0: 10.0, 1: -INF}),  # source 1 has sent nothing: nothing is late
    ((0, 1), [(0, 10.0), (1, 4.0)], 4.0, {0: 10.0, 1: 4.0}),  # the slowest source
    ((0, 1), [(0, 10.0), (1, 4.0), (1, 12.0)], 10.0, {0: 10.0, 1: 12.0}),
    ((0, 1), [(0, 10.0), (1, 4.0), (1, 2.0)], 4.0, {0: 10.0, 1: 4.0}),  # a source never goes back
    ((0, 1), [(0, 10.0), (1, 4.0), (9, 50.0), (None, 50.0)], 4.0, {0: 10.0, 1: 4.0}),  # not a source: ignored
])
def test_progress(sources, events, progress, source_progress):
    clock = EventClock(sources)
    for source, ts in events:
        clock.observe(source, ts)
    assert clock.progress == progress
    assert clock.source_progress() == source_progress
    assert clock.max_seen == max((ts for _, ts in events), default=-INF)


def test_a_progress_marker_is_an_event():
    a, b = EventClock([0, 1]), EventClock([0, 1])
    a.advance(0, 5.0), b.observe(0, 5.0)
    a.advance(1, 3.0), b.observe(1, 3.0)
    assert a.progress == b.progress == 3.0 and a.source_progress() == b.source_progress()


def test_snapshot_and_restore():
    clock = EventClock([0, 1, 2])
    clock.observe(0, 10.0), clock.observe(2, 7.0)
    snap = clock.snapshot()
    assert snap == ((0, 10.0), (1, -INF), (2, 7.0))
    again = EventClock([0, 1, 2])
    again.restore(snap)  # -inf entries are skipped: nothing seen from that source
    assert again.source_progress() == clock.source_progress() and again.progress == -INF
    single = EventClock()
    single.observe(None, 42.0)
    assert single.snapshot() == ((None, 42.0),)
    restored = EventClock()
    restored.restore(single.snapshot())
    assert restored.progress == 42.0
    restored.restore(((None, 1.0),))  # restore moves on, never back
    assert restored.progress == 42.0


events = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 4)), st.floats(-1e6, 1e6)), max_size=60)
source_sets = st.sampled_from([(), (0,), (0, 1), (0, 1, 2, 3)])


@settings(max_examples=200, deadline=None)
@given(sources=source_sets, events=events)
def test_progress_never_decreases_and_is_the_slowest_sources_max(sources, events):
    clock = EventClock(sources)
    seen: dict = {}
    last = -INF
    for source, ts in events:
        clock.observe(source, ts)
        seen.setdefault(source, []).append(ts)
        assert clock.progress >= last
        last = clock.progress
        if sources:
            assert clock.progress == min(max(seen.get(s, [-INF])) for s in sources)
        else:
            assert clock.progress == max(max(v) for v in seen.values())


@settings(max_examples=200, deadline=None)
@given(sources=source_sets, before=events, batch=events, after=events)
def test_progress_before_each_equals_one_by_one(sources, before, batch, after):
    """progress_before_each(batch) == progress read before each observe(), and leaves the same clock."""
    vectorized, one_by_one = EventClock(sources), EventClock(sources)
    for source, ts in before:
        vectorized.observe(source, ts), one_by_one.observe(source, ts)
    expected = []
    for source, ts in batch:
        expected.append(one_by_one.progress)
        one_by_one.observe(source, ts)
    ts = np.asarray([t for _, t in batch], dtype=np.float64)
    got = vectorized.progress_before_each(ts, [s for s, _ in batch])
    assert got.tolist() == expected
    for source, ts in after:  # the state after the batch is the same too
        vectorized.observe(source, ts), one_by_one.observe(source, ts)
        assert vectorized.progress == one_by_one.progress
    assert vectorized.source_progress() == one_by_one.source_progress()
    assert vectorized.snapshot() == one_by_one.snapshot() and vectorized.max_seen == one_by_one.max_seen


@settings(max_examples=100, deadline=None)
@given(sources=source_sets, events=events, cut=st.integers(0, 60))
def test_restore_of_a_snapshot_resumes_the_same_progress(sources, events, cut):
    original = EventClock(sources)
    for source, ts in events[:cut]:
        original.observe(source, ts)
    resumed = EventClock(sources)
    resumed.restore(original.snapshot())
    for source, ts in events[cut:]:
        original.observe(source, ts), resumed.observe(source, ts)
        assert resumed.progress == original.progress
