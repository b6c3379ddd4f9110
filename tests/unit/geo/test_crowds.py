"""The crowd rule (geo.crossings.crowd): batch, stream and pair stage against the brute-force oracle."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geo.crossings as gc
from geo.crossings import CellDetector, CrossingParams, LateFix, PairCooldown, cooldown_period, detect_crossings, route_many
from geo.crossings.crowd import CrowdCounts, GroupBests, crowd_slice, crowded_units
from geo.oracle import brute_force_crossings, brute_force_pairs
from geo.zones import SensitiveZones

ZONES = SensitiveZones.paris_sample()
LAT0, LON0 = 48.8566, 2.3522  # Paris: the sample zones are there


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "ts", "lat", "lon", "accuracy_m"]).astype({"accuracy_m": float})


@st.composite
def crowded_sets(draw, max_size=70):
    """A few hot spots (some near partition-key borders) and people passing by, over a few slices."""
    rows = []
    n_users = draw(st.integers(2, 14))
    spots = [(LAT0 + draw(st.floats(-0.01, 0.01)), LON0 + draw(st.floats(-0.015, 0.015))) for _ in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(0, max_size))):
        lat, lon = draw(st.sampled_from(spots))
        spread = draw(st.sampled_from([0.0003, 0.002, 0.008]))
        t = draw(st.sampled_from([0.0, 150.0, 299.0, 300.0, 301.0, 620.0, 3599.0, 3600.0, 3900.0]))
        rows.append((f"u{draw(st.integers(0, n_users - 1))}", 1_700_000_000.0 // 3600 * 3600 + t,
                     lat + draw(st.floats(-spread, spread)), lon + draw(st.floats(-spread, spread)) * 1.5,
                     draw(st.sampled_from([None, 5.0, 150.0]))))
    return frame(rows)


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def records(batch: pd.DataFrame, cooldown_s: float) -> dict:
    return {(a, b, float(cooldown_period(t, cooldown_s))): (t, place, band) for a, b, t, place, band in batch.itertuples(index=False)}


@SETTINGS
@given(df=crowded_sets(), limit=st.sampled_from([1, 2, 3, 5]), zones=st.booleans(), cooldown_s=st.sampled_from([0.0, 3600.0]))
def test_batch_equals_the_oracle_with_the_crowd_rule(df, limit, zones, cooldown_s):
    params = CrossingParams(crowd_users=limit, cooldown_s=cooldown_s)
    z = ZONES if zones else None
    batch = detect_crossings(df, params, z)
    assert records(batch, cooldown_s) == brute_force_crossings(df, params, z)
    assert gc.detect_pairs(df, params, z) == brute_force_pairs(df, params, z)


@SETTINGS
@given(df=crowded_sets())
def test_without_a_crowd_the_rule_changes_nothing(df):
    """A limit no unit reaches gives exactly the definition without the rule (crowd_users=0)."""
    off = CrossingParams(crowd_users=0)
    on = CrossingParams(crowd_users=max(1, df["user_id"].nunique()))
    pd.testing.assert_frame_equal(detect_crossings(df, on, ZONES), detect_crossings(df, off, ZONES))
    assert brute_force_crossings(df, on, ZONES) == brute_force_crossings(df, off, ZONES)


def test_a_crowd_removes_its_pairs_and_only_those():
    """Four people together in one place: with crowd_users=3 they are a crowd and no pair of them is
    reported; two people in a quiet place 3 km away still cross."""
    t0 = 1_700_000_000.0
    rows = [(f"fan{i}", t0 + i, LAT0, LON0 + i * 1e-5, None) for i in range(4)]
    rows += [("x", t0, LAT0 + 0.03, LON0, None), ("y", t0 + 5, LAT0 + 0.03, LON0 + 1e-4, None)]
    df = frame(rows)
    assert gc.detect_pairs(df, CrossingParams(crowd_users=0)) == {("x", "y")} | {(f"fan{i}", f"fan{j}") for i in range(4) for j in range(i + 1, 4)}
    assert gc.detect_pairs(df, CrossingParams(crowd_users=3)) == {("x", "y")}
    assert gc.detect_pairs(df, CrossingParams(crowd_users=4)) == gc.detect_pairs(df, CrossingParams(crowd_users=0))


def test_crowded_units_counts_people_not_pings():
    assert crowded_units(["k", "k", "k"], [1, 1, 1], ["a", "a", "b"], 1) == {("k", 1)}
    assert crowded_units(["k", "k", "k"], [1, 1, 1], ["a", "a", "a"], 1) == set()
    assert crowded_units(["k", "j"], [1, 1], ["a", "b"], 1) == set()
    assert crowded_units(["k", "k"], [1, 2], ["a", "b"], 1) == set()
    assert crowded_units(["k", "k"], [1, 1], ["a", "b"], 0) == set()  # 0: no crowd rule


def test_crowd_counts_mark_a_unit_once_and_expire_it():
    params = CrossingParams(crowd_users=2)
    counts = CrowdCounts(params)
    assert counts.note(["k", "k"], [0, 0], ["a", "b"]) == []
    assert counts.note(["k", "k", "k"], [0, 0, 0], ["b", "c", "d"]) == [("k", 0)]
    assert counts.is_crowd("k", 0) and counts.note(["k"], [0], ["e"]) == []
    counts.expire(299.0)
    assert counts.is_crowd("k", 0)
    counts.expire(300.0)  # slice 0 is [0, 300): over
    assert not counts.is_crowd("k", 0) and len(counts) == 0


# --------------------------------------------------------------------------- the stream


def stream_records(df: pd.DataFrame, params: CrossingParams, zones, n_partitions: int, rng: random.Random,
                   batch: int, shuffle: bool) -> dict:
    """Pings through route_many, CellDetectors (one per partition of keys, GroupBests pre-filter),
    then the pair stage (PairCooldown.offer_group / withdraw_unit / settle), each detector's
    messages in its order, interleaved at random: each pair's final record."""
    rows = list(df.itertuples(index=False))
    if shuffle:
        rng.shuffle(rows)
    else:
        rows.sort(key=lambda r: r.ts)
    detectors = [CellDetector(params, zones) for _ in range(n_partitions)]
    bests = [GroupBests(params) for _ in range(n_partitions)]
    queues: list[list] = [[] for _ in range(n_partitions)]
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        acc = [None if pd.isna(r.accuracy_m) else float(r.accuracy_m) for r in chunk]
        routes = route_many([r.lat for r in chunk], [r.lon for r in chunk], acc, params)
        per: dict[int, list[int]] = {}
        for j, key in enumerate(routes.keys):
            per.setdefault(hash(key) % n_partitions, []).append(j)
        for q, entries in per.items():
            fixes = [chunk[int(routes.fix[j])] for j in entries]
            homes = {}
            for j in range(len(routes.keys)):
                if routes.home[j]:
                    homes[int(routes.fix[j])] = routes.keys[j]
            out = detectors[q].add_many([f.user_id for f in fixes], [f.ts for f in fixes], [f.lat for f in fixes],
                                        [f.lon for f in fixes], [acc[int(routes.fix[j])] for j in entries],
                                        [homes[int(routes.fix[j])] for j in entries], [routes.keys[j] for j in entries],
                                        cooldown=bests[q])
            for w in bests[q].withdrawn:
                queues[q].append(("w", *w))
            bests[q].withdrawn.clear()
            queues[q].extend(("c", c) for c in bests[q].released)
            bests[q].released.clear()
            for result in out:
                assert not isinstance(result, LateFix)
                queues[q].extend(("c", c) for c in result)
            queues[q].append(("s", detectors[q].watermark))
            if rng.random() < 0.3:
                bests[q].close(detectors[q].watermark)
    for q in range(n_partitions):  # the end of the input: every slice is over
        bests[q].close(math.inf)
        queues[q].extend(("c", c) for c in bests[q].released)
    pairs = PairCooldown(params)
    while any(queues):
        q = rng.choice([i for i, m in enumerate(queues) if m])
        for _ in range(rng.randint(1, 5)):
            if not queues[q]:
                break
            kind, *rest = queues[q].pop(0)
            if kind == "c":
                (c,) = rest
                pairs.offer_group(c.user_a, c.user_b, *c.group, c.ts, c.distance_m, c.place, c.distance_band, q)
            elif kind == "w":
                pairs.withdraw_unit(*rest)
            else:
                pairs.settle(q, rest[0])
    return {pair: (t, place, band) for pair, (t, _, place, band) in pairs._last.items()}


@SETTINGS
@given(df=crowded_sets(), limit=st.sampled_from([1, 2, 3, 100]), zones=st.booleans(), n_partitions=st.integers(1, 4),
       batch=st.sampled_from([1, 3, 50]), shuffle=st.booleans(), seed=st.integers(0, 2**16))
def test_stream_final_records_equal_the_batch_with_the_crowd_rule(df, limit, zones, n_partitions, batch, shuffle, seed):
    """Whatever the partitions, batch sizes and arrival order (nothing late), the pair stage's final
    record per pair is the batch's latest record per pair under the same crowd rule."""
    params = CrossingParams(crowd_users=limit, lateness_s=1e9 if shuffle else 120.0)
    z = ZONES if zones else None
    latest = {(a, b): (t, place, band) for a, b, t, place, band in gc.latest_per_pair(detect_crossings(df, params, z)).itertuples(index=False)}
    assert stream_records(df, params, z, n_partitions, random.Random(seed), batch, shuffle) == latest


def test_detector_work_in_a_crowd_is_a_count_not_a_match():
    """1,000 people within 100 m over 10 minutes with crowd_users=50: once a unit is a crowd, its pings are
    neither matched nor kept, so the detector holds at most ~crowd_users people's pings per unit."""
    rng = np.random.default_rng(1)
    params = CrossingParams(crowd_users=50)
    n = 20_000
    users = [f"fan{i}" for i in rng.integers(0, 1000, n)]
    ts = np.sort(1_700_000_000.0 + rng.uniform(0, 600, n))
    lat = LAT0 + rng.uniform(-0.0005, 0.0005, n)
    lon = LON0 + rng.uniform(-0.0007, 0.0007, n)
    routes = route_many(lat, lon, None, params)
    fix = routes.fix
    det, bests = CellDetector(params), GroupBests(params)
    homes = {int(f): k for f, k, h in zip(fix, routes.keys, routes.home) if h}
    found = 0
    for s in range(0, len(routes.keys), 2000):
        idx = range(s, min(s + 2000, len(routes.keys)))
        out = det.add_many([users[fix[j]] for j in idx], ts[fix[list(idx)]], lat[fix[list(idx)]], lon[fix[list(idx)]],
                           [None] * len(idx), [homes[int(fix[j])] for j in idx], [routes.keys[j] for j in idx], cooldown=bests)
        found += sum(len(r) for r in out)
    assert det.crowds_seen >= 2  # both slices of the crowd at its key(s)
    keys_used = len(set(routes.keys))
    assert det.live_pings <= keys_used * 2 * 51 * 25  # people per unit x a generous pings per person in a slice
    assert len(bests) == 0  # every group sent from the crowd was withdrawn
    assert det.crowd.crowds() and all(det.crowd.is_crowd(*u) for u in det.crowd.crowds())


def test_crowd_slice_is_aligned_on_the_epoch():
    params = CrossingParams()
    assert crowd_slice(0.0, params) == 0 and crowd_slice(299.999, params) == 0 and crowd_slice(300.0, params) == 1
    assert crowd_slice(-0.5, params) == -1
    assert list(crowd_slice(np.array([0.0, 300.0, 601.0]), params)) == [0, 1, 2]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "200"])
def test_crowd_users_must_be_a_count(bad):
    with pytest.raises(ValueError, match="crowd_users"):
        CrossingParams(crowd_users=bad)


def test_an_erased_user_leaves_the_counts_but_the_count_stays():
    counts = CrowdCounts(CrossingParams(crowd_users=2))
    counts.note(["k", "k"], [0, 0], ["alice", "bob"])
    counts.forget_user("alice")
    assert all("alice" not in who for who in counts._people.values())
    assert counts.note(["k"], [0], ["carol"]) == [("k", 0)]  # alice still counts as one person


def test_pair_stage_record_falls_back_when_its_group_is_withdrawn_and_prunes_final_groups():
    params = CrossingParams(crowd_users=2)
    stage = PairCooldown(params)
    # group at key k, slices 0/0 (t=100) and a worse one at key j, slice 1 (t=400): the record is t=100
    assert stage.offer_group("a", "b", "k", 0, 0, 100.0, 10.0, "p1", "<50m", 0).record[0] == 100.0
    out = stage.offer_group("a", "b", "j", 1, 1, 400.0, 5.0, "p2", "<50m", 1)
    assert out.touched and not out.changed and out.record[0] == 100.0
    out = stage.withdraw_unit("a", "b", "k", 0)  # (k, 0) became a crowd: the record is now the t=400 crossing
    assert out.changed and out.record == (400.0, 5.0, "p2", "<50m")
    restored = PairCooldown.restore(stage.snapshot(), params)
    assert restored.groups_of("a", "b") == stage.groups_of("a", "b")
    out = stage.withdraw_unit("a", "b", "j", 1)
    assert out.changed and out.record is None and stage.current("a", "b") is None and not stage.partners_of("a")
    # a final group (its slice over for its detector) makes older periods' groups irrelevant: pruned
    stage.offer_group("a", "c", "k", 0, 0, 100.0, 1.0, "p", "<50m", 0)
    stage.offer_group("a", "c", "k", 12, 12, 3700.0, 1.0, "p", "<50m", 0)
    stage.settle(0, 3900.0)
    stage.offer_group("a", "c", "k", 13, 13, 3950.0, 1.0, "p", "<50m", 0)
    assert [g[1] for g in stage.groups_of("a", "c")] == [12]  # the later, worse one of the same period too
    assert stage.current("a", "c")[0] == 3700.0


def test_where_a_crowd_just_was_crossings_wait_for_their_slice_instead_of_being_withdrawn():
    """A crowd in slice 0 at a key: in slice 1 the first people there are held back (not sent, so not
    withdrawn) until slice 1 is over; if it stays quiet they are sent then, if it fills up they are dropped."""
    params = CrossingParams(crowd_users=3, lateness_s=0.0)
    det, bests = CellDetector(params), GroupBests(params)
    key = "k"

    def add(users, t):
        return det.add_many(users, [t] * len(users), [LAT0 + 1e-5 * i for i in range(len(users))], [LON0] * len(users),
                            [None] * len(users), [key] * len(users), [key] * len(users), cooldown=bests)

    add(["a", "b", "c", "d"], 10.0)  # 4 people > 3: slice 0 is a crowd
    assert det.crowd.is_crowd(key, 0) and det.crowd.suspect(key, 1)
    got = add(["x", "y"], 310.0)  # slice 1: two people cross, next to where the crowd was
    assert got == [[], []] and bests.held() == 1 and not bests.released
    add(["z"], 700.0)  # slice 2 starts: slice 1 is over (no lateness), it never became a crowd
    assert [(c.user_a, c.user_b) for c in bests.released] == [("x", "y")] and bests.held() == 0
    bests.released.clear()
    add(["p", "q"], 910.0)  # slice 3 follows a quiet slice 2: sent at once
    assert not det.crowd.suspect(key, 3) and bests.held() == 0
