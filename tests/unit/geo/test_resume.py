"""Rebuilding a crossing detector from its input log: a restarted detector reports what the original would."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.crossings import CellDetector, LateFix
from geo.resume import ReplayLog, ResumePoint, choose, progress_of, remember, restore_progress
from tests.unit.geo.test_crossings import P, routed_arrivals


def _handle(det: CellDetector, record) -> list:
    """One input record: ("batch", rows) -> add_many's results, or ("marker", source, ts) -> []."""
    if record[0] == "marker":
        _, source, ts = record
        det.advance(source, ts)
        return []
    cols = list(zip(*record[1]))
    return det.add_many(*cols[:7], sources=cols[7] if cols[7][0] is not None else None)


def _newest(records) -> float:
    return max((row[1] for r in records if r[0] == "batch" for row in r[1]), default=-math.inf)


def _run(det: CellDetector, log: ReplayLog, records, start: int, calls: list[int], points: list, keep: int):
    """Handle records[start:] in calls ending at the offsets `calls`; save a point after each call."""
    results = {}
    first = start
    for end in [c for c in calls if c > start] + [len(records)]:
        if end <= first:
            continue
        before = progress_of(det)
        for offset in range(first, end):
            results[offset] = _handle(det, records[offset])
        log.note(first, end, before, _newest(records[first:end]))
        points[:] = remember(points, log.point(det.horizon, progress_of(det)), keep)
        if end % 3 == 0:
            det.evict()  # the worker evicts every few thousand pings: it must not matter
        first = end
    return results


@st.composite
def input_logs(draw):
    """A crossing-cells partition's log: batches of routed pings, progress markers, in handler calls."""
    rows, n_sources = draw(routed_arrivals())
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=60))
    records, i = [], 0
    for size in sizes:
        if i >= len(rows):
            break
        if n_sources and draw(st.booleans()):
            records.append(("marker", draw(st.integers(0, n_sources - 1)), draw(st.floats(-500.0, 5000.0))))
        records.append(("batch", rows[i:i + size]))
        i += size
    if i < len(rows):
        records.append(("batch", rows[i:]))
    calls = sorted(set(draw(st.lists(st.integers(1, len(records)), max_size=10)))) if records else []
    return records, n_sources, calls


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(log_=input_logs(), data=st.data())
def test_a_detector_rebuilt_from_a_resume_point_reports_what_the_original_would(log_, data):
    """Crash anywhere between handler calls, with points saved after the resume offset too (written
    but not committed): the rebuilt detector's results for every later record, late fixes included,
    equal the uninterrupted detector's, and so do its watermark and (after eviction) its live pings."""
    records, n_sources, calls = log_
    keep = data.draw(st.integers(1, 8))
    original, points = CellDetector(P, sources=range(n_sources)), []
    expected = _run(original, ReplayLog(), records, 0, calls, points, keep=1000)
    resume_at = data.draw(st.sampled_from([0, *[c for c in calls if c < len(records)]]))
    saved = points[:data.draw(st.integers(0, len(points)))][-keep:]  # the crash may come before the newest
    point = choose(saved, resume_at)
    if point is None:  # nothing usable: then only a start from the very beginning is exact
        point = ResumePoint(0, 0, ())
        if resume_at:
            return
    rebuilt, log = CellDetector(P, sources=range(n_sources)), ReplayLog()
    restore_progress(rebuilt, point.progress)
    cut = data.draw(st.integers(point.low, resume_at))  # replayed in any chunks
    _run(rebuilt, log, records[:resume_at], point.low, [cut], [], keep=1)
    got = _run(rebuilt, log, records, resume_at, calls, [], keep=1)
    assert got == {k: v for k, v in expected.items() if k >= resume_at}
    assert rebuilt.watermark == original.watermark
    original.evict(), rebuilt.evict()
    assert rebuilt.live_pings == original.live_pings


def test_low_moves_past_stretches_older_than_the_horizon():
    log = ReplayLog()
    log.note(0, 5, ((0, 100.0),), newest_ts=100.0)
    log.note(5, 9, ((0, 150.0),), newest_ts=400.0)
    log.note(9, 12, ((0, 400.0),), newest_ts=500.0)
    assert log.point(horizon=50.0, progress_now=((0, 500.0),)) == ResumePoint(12, 0, ((0, 100.0),))
    assert log.point(horizon=200.0, progress_now=((0, 500.0),)) == ResumePoint(12, 5, ((0, 150.0),))
    assert log.point(horizon=450.0, progress_now=((0, 500.0),)) == ResumePoint(12, 9, ((0, 400.0),))
    assert log.point(horizon=600.0, progress_now=((0, 500.0),)) == ResumePoint(12, 12, ((0, 500.0),))
    assert len(log) == 0
    log.note(10, 12, ((0, 300.0),), newest_ts=900.0)  # delivered twice: nothing new
    assert len(log) == 0
    log.note(10, 14, ((0, 300.0),), newest_ts=900.0)  # the new part starts where the log was
    assert log.point(horizon=600.0, progress_now=((0, 900.0),)) == ResumePoint(14, 12, ((0, 300.0),))
    with pytest.raises(ValueError):
        log.note(20, 19, (), 0.0)


def test_choose_takes_the_newest_point_not_after_the_resume_offset():
    points = [ResumePoint(10, 2, ()), ResumePoint(20, 8, ()), ResumePoint(30, 15, ())]
    assert choose(points, 25) == points[1]
    assert choose(points, 30) == points[2]
    assert choose(points, 9) is None
    assert remember(points, ResumePoint(40, 20, ()), keep=2) == [points[2], ResumePoint(40, 20, ())]


def test_resume_points_round_trip_through_json():
    point = ResumePoint(7, 3, ((0, 12.5), (1, -math.inf)))
    assert ResumePoint.from_json(point.to_json()) == point
    assert point.to_json() == [7, 3, [[0, 12.5], [1, None]]]
    with pytest.raises(ValueError):
        ResumePoint(3, 7, ())


def test_a_late_fix_after_a_rebuild_is_judged_as_before():
    """The watermark comes back with the point: a fix late before the crash is late after it."""
    det, log, points = CellDetector(P, sources=[0]), ReplayLog(), []
    records = [("batch", [("a", 1000.0, 48.85, 2.35, None, "k", "k", 0)]),
               ("batch", [("b", 5000.0, 10.0, 10.0, None, "j", "j", 0)])]
    _run(det, log, records, 0, [1], points, keep=10)
    rebuilt, point = CellDetector(P, sources=[0]), choose(points, 2)
    restore_progress(rebuilt, point.progress)
    _run(rebuilt, ReplayLog(), records, point.low, [], [], keep=1)
    late = rebuilt.add_many(["c"], [1000.0], [48.85], [2.35], [None], ["k"], ["k"], sources=[0])
    assert isinstance(late[0], LateFix)
