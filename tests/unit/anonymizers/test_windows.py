import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymizers.windows import ClosedWindow, WindowedDistinct, window_start

H = 3600.0


@pytest.mark.parametrize(
    "ts, size, start",
    [
        (0, 3600, 0.0),
        (3599.999, 3600, 0.0),
        (3600, 3600, 3600.0),
        (1_700_000_123.4, 3600, 1_699_999_200.0),
        (-1, 3600, -3600.0),
        (125, 60, 120.0),
    ],
)
def test_window_start(ts, size, start):
    assert window_start(ts, size) == start


@pytest.mark.parametrize("ts, size, message", [(float("nan"), 60, "ts=nan"), ("x", 60, "ts='x'"), (1, 0, "size_s=0")])
def test_window_start_errors(ts, size, message):
    with pytest.raises(ValueError, match=message):
        window_start(ts, size)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(size_s=0), "size_s=0"), (dict(size_s=60, lateness_s=-1), "lateness_s=-1"), (dict(size_s=float("inf")), "size_s=inf")],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowedDistinct(**kwargs)


def test_distinct_members_and_closing():
    w = WindowedDistinct(H, lateness_s=600)
    assert w.watermark is None
    for ts, key, member in [(10, "c1", "a"), (20, "c1", "a"), (30, "c1", "b"), (40, ("x", "y"), "a")]:
        assert w.add(ts, key, member) == "ok"
    assert w.closed() == []
    assert w.add(H + 599, "c2", "z") == "ok"  # end + lateness = 4200 > 4199: still open
    assert w.closed() == []
    assert w.add(H + 600, "c2", "z") == "ok"
    assert w.closed() == [ClosedWindow(0.0, H, {"c1": {"a", "b"}, ("x", "y"): {"a"}})]
    assert w.closed() == []  # forgotten once returned
    assert w.open_windows() == [H]


@pytest.mark.parametrize(
    "ts, expected",
    [(H + 10, "ok"), (H - 1, "ok"), (H - 1 - 300, "ok"), (0, "ok"), (-1, "late"), (-H, "late")],
)
def test_late(ts, expected):
    w = WindowedDistinct(H, lateness_s=H)  # window [0, H) closes at watermark 2H
    w.add(H + 1000, "c", "a")
    w.add(2 * H - 1, "c", "a")
    assert w.add(ts, "c", "b") == expected
    w.add(2 * H, "c", "a")
    assert w.add(H - 1, "c", "b") == "late"  # window [0, H) is closed now
    assert w.add(2 * H + 1, "c", "b") == "ok"


def test_late_even_before_collection():
    w = WindowedDistinct(60)
    w.add(10, "k", "a")
    w.add(130, "k", "b")
    assert w.add(20, "k", "late-one") == "late"
    closed = w.closed()
    assert closed == [ClosedWindow(0.0, 60.0, {"k": {"a"}})]


def test_advance_and_flush():
    w = WindowedDistinct(60, lateness_s=30)
    w.add(10, "k", "a")
    w.add(70, "k", "b")
    assert w.advance(50) == []  # never moves back below 70
    assert w.watermark == 70
    assert [c.start for c in w.advance(90)] == [0.0]
    assert w.flush() == [ClosedWindow(60.0, 120.0, {"k": {"b"}})]
    assert w.open_windows() == []
    with pytest.raises(ValueError, match="watermark=nan"):
        w.advance(float("nan"))


def test_purge():
    w = WindowedDistinct(60)
    w.add(1, "c1", "alice")
    w.add(2, "c2", "alice")
    w.add(3, "c2", "bob")
    w.add(61, "c1", "alice")
    w.add(62, "c3", "carol")
    assert w.purge("alice") == 3
    assert w.purge("alice") == 0
    assert w.purge("nobody") == 0
    assert w.flush() == [ClosedWindow(0.0, 60.0, {"c2": {"bob"}}), ClosedWindow(60.0, 120.0, {"c3": {"carol"}})]


def test_purge_drops_empty_windows():
    w = WindowedDistinct(60)
    w.add(1, "c1", "alice")
    assert w.purge("alice") == 1
    assert w.open_windows() == []


def test_snapshot_round_trip():
    w = WindowedDistinct(60, lateness_s=10)
    for ts, key, member in [(1, "891fb466257ffff", "p1"), (2, ("Chrome", "fr"), "p2"), (65, "891fb466257ffff", "p3"), (66, ("Chrome", "fr"), "p1")]:
        w.add(ts, key, member)
    state = json.loads(json.dumps(w.snapshot(), allow_nan=False))
    r = WindowedDistinct.restore(state)
    assert r.snapshot() == w.snapshot()
    assert (r.size_s, r.lateness_s, r.watermark) == (60.0, 10.0, 66)
    assert r.add(5, "x", "late?") == w.add(5, "x", "late?")
    assert r.flush() == w.flush()


def test_snapshot_of_empty_and_bad_version():
    w = WindowedDistinct(60)
    state = json.loads(json.dumps(w.snapshot(), allow_nan=False))
    assert WindowedDistinct.restore(state).watermark is None
    with pytest.raises(ValueError, match="version=99"):
        WindowedDistinct.restore({**state, "version": 99})


items = st.lists(
    st.tuples(st.floats(0, 10_000, allow_nan=False), st.sampled_from(["a", "b", ("g", "1")]), st.integers(0, 20)),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(items, st.sampled_from([60.0, 600.0, 3600.0]))
def test_matches_oracle_without_lateness_pressure(events, size):
    w = WindowedDistinct(size, lateness_s=20_000)
    oracle: dict = {}
    for ts, key, member in events:
        assert w.add(ts, key, member) == "ok"
        oracle.setdefault(window_start(ts, size), {}).setdefault(key, set()).add(member)
    restored = WindowedDistinct.restore(json.loads(json.dumps(w.snapshot())))
    expected = [ClosedWindow(s, s + size, oracle[s]) for s in sorted(oracle)]
    assert w.flush() == expected
    assert restored.flush() == expected


@settings(max_examples=150, deadline=None)
@given(items)
def test_closed_windows_never_change(events):
    """A window is returned at most once and nothing is accepted into it afterwards."""
    w = WindowedDistinct(600.0, lateness_s=120)
    emitted: dict = {}
    for ts, key, member in events:
        result = w.add(ts, key, member)
        if window_start(ts, 600.0) in emitted:
            assert result == "late"
        for c in w.closed():
            assert c.start not in emitted and c.end + 120 <= w.watermark
            emitted[c.start] = c


def test_watermark_waits_for_the_slowest_source():
    """With sources, an item from a lagging upstream partition is not late."""
    wd = WindowedDistinct(3600, 300, sources=[0, 1])
    assert wd.add(10 * 3600 + 900, "cell", "m1", source=0) == "ok"
    assert wd.add(3 * 3600, "cell", "m2", source=1) == "ok"  # source 1 lags far behind: still on time
    assert wd.closed() == []
    assert wd.add(10 * 3600 + 950, "cell", "m3", source=1) == "ok"
    closed = wd.closed()
    assert [c.start for c in closed] == [3 * 3600]
    assert wd.add(3 * 3600 + 5, "cell", "m4", source=0) == "late"


def test_a_progress_marker_closes_windows_a_quiet_source_held_open():
    """A source whose items all went elsewhere sends its progress instead: the windows it held open close."""
    wd = WindowedDistinct(3600, 300, sources=[0, 1])
    assert wd.add(3600 + 10, "cell", "m1", source=0) == "ok"
    assert wd.add(2 * 3600 + 400, "cell", "m2", source=0) == "ok"
    assert wd.closed() == []  # source 1 has sent nothing here
    wd.advance_source(1, 2 * 3600 + 299)
    assert wd.closed() == []  # end + lateness not passed yet
    wd.advance_source(1, 1000.0)  # progress never goes back
    wd.advance_source(7, 10 * 3600)  # not a source of this stage: ignored
    assert wd.closed() == []
    wd.advance_source(1, 2 * 3600 + 300)
    assert [(c.start, c.members) for c in wd.closed()] == [(3600, {"cell": {"m1"}})]
    assert wd.add(3600 + 20, "cell", "m3", source=1) == "late"  # judged against its own marker


def test_progress_markers_equal_items_that_count_for_nothing():
    """advance_source(s, ts) then items == an item of s at ts in a window nobody reads, then items."""
    import random

    rng = random.Random(3)
    for _ in range(200):
        a, b = WindowedDistinct(600, 120, sources=[0, 1, 2]), WindowedDistinct(600, 120, sources=[0, 1, 2])
        closed_a, closed_b = [], []
        for i in range(30):
            ts, src = rng.uniform(0, 5000), rng.randrange(3)
            if rng.random() < 0.3:
                a.advance_source(src, ts)
                b.add(ts, ("ghost", i), "nobody", source=src)
            else:
                assert a.add(ts, "cell", f"m{i}", source=src) == b.add(ts, "cell", f"m{i}", source=src)
            closed_a += [(c.start, c.members) for c in a.closed()]
            closed_b += [(c.start, {k: v for k, v in c.members.items() if k == "cell"}) for c in b.closed()]
        assert closed_a == [(s, m) for s, m in closed_b if m] and a.watermark == b.watermark
