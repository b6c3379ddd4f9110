"""The detector partition's pre-filter in batches: GroupBests.offer_many is offer() one by one,
PairCooldown.expire's index forgets exactly what a scan of every pair would, places_of is place_of."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.crossings import CrossingParams, PairCooldown
from geo.crossings.crowd import GroupBests
from geo.crossings.model import place_of, places_of

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USERS = ["a", "b", "c", "d"]
KEYS = ["k1", "k2"]
T0 = 1_700_000_000.0 // 3600 * 3600


@st.composite
def offers(draw, max_size=12):
    """Offers as the detector makes them: pair, key, the two pings' slices, the later ping's time, the
    distance; times and distances from small sets, so that ties and repeats are common."""
    out = []
    users = draw(st.sampled_from([USERS[:2], USERS[:3], USERS]))
    keys = draw(st.sampled_from([KEYS[:1], KEYS]))
    offsets = draw(st.sampled_from([[0.0], [0.0, 299.0], [0.0, 10.0, 200.0, 299.0]]))
    for _ in range(draw(st.integers(0, max_size))):
        a, b = draw(st.sampled_from([(x, y) for x in users for y in users if x < y]))
        hi = draw(st.integers(0, 3))
        lo = hi - draw(st.integers(0, 1))
        ts = T0 + hi * 300.0 + draw(st.sampled_from(offsets))
        d = draw(st.sampled_from([1.0, 2.0, 50.0]))
        out.append((a, b, draw(st.sampled_from(keys)), lo, hi, ts, d))
    return out


def _offer_many(bests: GroupBests, batch: list[tuple]) -> list[bool]:
    users = sorted({u for o in batch for u in o[:2]})
    keys = sorted({o[2] for o in batch})
    cols = list(zip(*batch)) if batch else [()] * 7
    got = bests.offer_many(users, np.asarray([users.index(u) for u in cols[0]], dtype=np.int64),
                           np.asarray([users.index(u) for u in cols[1]], dtype=np.int64), keys,
                           np.asarray([keys.index(k) for k in cols[2]], dtype=np.int64),
                           np.asarray(cols[3], dtype=np.int64), np.asarray(cols[4], dtype=np.int64),
                           np.asarray(cols[5], dtype=np.float64), np.asarray(cols[6], dtype=np.float64))
    return got.tolist()


def _state(bests: GroupBests) -> tuple:
    """What offer() reads and writes; and the closed records' sorted copy, read back per pair."""
    times = bests._closed_times
    times.sync(bests.closed)
    pairs = [(x, y) for x in USERS for y in USERS if x < y]
    codes = times.codes([x for x, _ in pairs]), times.codes([y for _, y in pairs])
    copy_ts, copy_d = times.lookup(times._pack(*codes))
    truth_ts, truth_d = bests.closed.current_many(pairs)
    np.testing.assert_array_equal(copy_ts, truth_ts)
    np.testing.assert_array_equal(copy_d, truth_d)
    return (dict(bests._best), {k: list(v) for k, v in bests._by_unit.items()}, {k: list(v) for k, v in bests._by_end.items()},
            dict(bests.closed._last))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(offers(), max_size=6),
       between=st.lists(st.one_of(st.tuples(st.just("close"), st.integers(0, 4)),
                                  st.tuples(st.just("purge"), st.sampled_from(USERS)),
                                  st.tuples(st.just("withdraw"), st.integers(0, 3))), max_size=6),
       cooldown_s=st.sampled_from([0.0, 250.0, 3600.0]), crowd_users=st.sampled_from([0, 200]))
def test_offer_many_is_offer_one_by_one(batches, between, cooldown_s, crowd_users):
    """The same answers and the same state as offer() for each, in order, whatever was closed, purged
    or withdrawn between batches (the closed records' sorted copy follows every change)."""
    params = CrossingParams(cooldown_s=cooldown_s, crowd_users=crowd_users)
    one, many = GroupBests(params), GroupBests(params)
    for step, batch in enumerate(batches):
        expected = [one.offer(*o) for o in batch]
        assert _offer_many(many, batch) == expected
        assert _state(many) == _state(one)
        if step < len(between):
            op, arg = between[step]
            for bests in (one, many):
                if op == "close":
                    bests.close(T0 + arg * 300.0 + (cooldown_s if arg == 4 else 0.0))
                elif op == "purge":
                    bests.purge_user(arg)
                else:
                    bests.withdraw_unit(KEYS[arg % 2], arg)
            assert _state(many) == _state(one)


def _expire_by_scan(cooldown: PairCooldown, before: float) -> set:
    return {pair for pair, current in cooldown._last.items() if current[0] < before}


@SETTINGS
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("offer"), st.sampled_from([("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")]),
              st.floats(0.0, 10_000.0), st.sampled_from([1.0, 5.0])),
    st.tuples(st.just("expire"), st.floats(-100.0, 12_000.0)),
    st.tuples(st.just("purge"), st.sampled_from(USERS))), max_size=40))
def test_expire_forgets_exactly_the_pairs_older_than_its_time(steps):
    """expire() (an index by record time after its first call) forgets what a scan of every pair would."""
    cooldown = PairCooldown(CrossingParams(cooldown_s=600.0))
    for step in steps:
        if step[0] == "offer":
            cooldown.offer_pair(*step[1], step[2], step[3])
        elif step[0] == "purge":
            cooldown.purge_user(step[1])
        else:
            gone = _expire_by_scan(cooldown, step[1])
            kept = set(cooldown._last) - gone
            assert cooldown.expire(step[1]) == len(gone)
            assert set(cooldown._last) == kept


def test_places_of_names_the_cells_of_place_of():
    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(-90.0, 90.0, 3000), rng.uniform(-180.0, 180.0, 3000)
    lat[:3], lon[:3] = [90.0, -90.0, 0.0], [180.0, -180.0, 0.0]
    for resolution in (0, 8, 15):
        params = CrossingParams(place_resolution=resolution)
        assert places_of(lat, lon, params) == [place_of(a, b, params) for a, b in zip(lat, lon)]
    assert places_of(np.empty(0), np.empty(0), CrossingParams()) == []
