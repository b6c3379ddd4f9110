"""Crossing detection: edge-case tables, oracle properties, streaming exactness."""

from __future__ import annotations

import ast
import collections
import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import h3
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geo.crossings as gc
import geo.crossings.search as search
from geo.crossings import (
    CellDetector,
    Crossing,
    CrossingParams,
    Fix,
    LateFix,
    PairCooldown,
    detect_crossings,
    distance_band,
    pair_key,
    route,
    route_many,
    split_pair_key,
)
from geo.crossings.detector import _TS
from geo.crossings.model import _outside_zones, cooldown_period
from geo.distance import EARTH_RADIUS_M, haversine_m, midpoint
from geo.crossings.crowd import GroupBests
from geo.oracle import brute_force_crossings, brute_force_pairs
from geo.zones import SensitiveZones

GEO_DIR = Path(__file__).resolve().parents[3] / "geo"
P = CrossingParams()
ZONES = SensitiveZones.paris_sample()


def frame(rows) -> pd.DataFrame:
    """Pings from (user, ts, lat, lon[, accuracy]) tuples."""
    rows = [tuple(r) + (None,) * (5 - len(r)) for r in rows]
    return pd.DataFrame(rows, columns=["user_id", "ts", "lat", "lon", "accuracy_m"]).astype({"accuracy_m": float})


def stream_crossings(df: pd.DataFrame, params: CrossingParams, zones=None, purge=None):
    """Feed pings in time order through route() and one CellDetector per key; all crossings."""
    detectors: dict[str, CellDetector] = {}
    found = []
    purged_at = None
    for n, row in enumerate(df.sort_values("ts", kind="stable").itertuples(index=False)):
        if purge is not None and n == purge[1]:
            for det in detectors.values():
                det.purge_user(purge[0])
            purged_at = len(found)
        if purged_at is not None and row.user_id == purge[0]:
            continue  # consent withdrawn: ingestion drops the user's later pings
        acc = None if pd.isna(row.accuracy_m) else float(row.accuracy_m)
        fix = Fix(row.user_id, float(row.ts), float(row.lat), float(row.lon), acc)
        keys = route(fix, params)
        for key, _ in keys:
            det = detectors.setdefault(key, CellDetector(params, zones))
            out = det.add(fix, keys[0][0], key)
            assert not isinstance(out, LateFix)
            found.extend(out)
    return found, purged_at


def pairs_of(out) -> set[tuple[str, str]]:
    if isinstance(out, pd.DataFrame):
        return set(zip(out["user_a"], out["user_b"]))
    return {(c.user_a, c.user_b) for c in out}


def exact_d_lon(lat: float, d: float) -> float:
    """Largest lon offset at latitude lat whose haversine from (lat, 0) is <= d."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if haversine_m(lat, 0.0, lat, mid) <= d:
            lo = mid
        else:
            hi = mid
    while haversine_m(lat, 0.0, lat, np.nextafter(lo, 2.0)) <= d:
        lo = float(np.nextafter(lo, 2.0))
    return lo


# --------------------------------------------------------------------------- distance


def test_haversine_scalar_and_array_agree_bit_for_bit():
    rng = np.random.default_rng(3)
    a = rng.uniform(-90, 90, (4, 2000))
    a[1] *= 2
    a[3] *= 2
    arr = haversine_m(a[0], a[1], a[2], a[3])
    scal = np.array([haversine_m(*a[:, i]) for i in range(2000)])
    assert np.array_equal(arr, scal)
    assert np.array_equal(arr, haversine_m(a[2], a[3], a[0], a[1]))  # symmetric


@pytest.mark.parametrize(
    "p, q, expected_m",
    [
        ((0.0, 0.0), (0.0, 1.0), EARTH_RADIUS_M * math.pi / 180),
        ((0.0, 179.9995), (0.0, -179.9995), EARTH_RADIUS_M * math.radians(0.001)),
        ((90.0, 0.0), (-90.0, 0.0), EARTH_RADIUS_M * math.pi),
        ((89.999, 0.0), (89.999, 180.0), EARTH_RADIUS_M * math.radians(0.002)),
    ],
)
def test_haversine_known_distances(p, q, expected_m):
    assert haversine_m(*p, *q) == pytest.approx(expected_m, rel=1e-9)


def test_midpoint_across_antimeridian_and_symmetric():
    lat, lon = midpoint(10.0, 179.9, 10.0, -179.9)
    assert lat == pytest.approx(10.0, abs=1e-3) and abs(lon) == pytest.approx(180.0, abs=1e-9)
    assert midpoint(1.0, 2.0, 3.0, 4.0) == midpoint(3.0, 4.0, 1.0, 2.0)


# --------------------------------------------------------------------------- params and small pieces


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distance_m": -1}, "distance_m=-1 must be > 0"),
        ({"distance_m": 0.5}, "distance_m=0.5 must be in"),
        ({"window_s": -5.0}, "window_s=-5.0"),
        ({"max_accuracy_m": -1.0}, "max_accuracy_m=-1.0"),
        ({"cooldown_s": float("inf")}, "cooldown_s=inf"),
        ({"place_resolution": 16}, "place_resolution=16"),
        ({"place_resolution": True}, "place_resolution=True"),
        ({"partition_cell_m": 100.0}, "partition_cell_m=100.0 must be finite and >= distance_m=250.0"),
        ({"distance_m": "250"}, "distance_m='250' must be a number"),
    ],
)
def test_params_validation_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        CrossingParams(**kwargs)


@pytest.mark.parametrize(
    "d, band",
    [(0.0, "<50m"), (49.99, "<50m"), (50.0, "50-100m"), (99.9, "50-100m"), (100.0, "100-250m"), (250.0, "100-250m"), (250.01, ">250m")],
)
def test_distance_band_default(d, band):
    assert distance_band(d, P) == band


def test_distance_band_follows_distance_param():
    assert distance_band(10, CrossingParams(distance_m=100, partition_cell_m=100)) == "<20m"
    assert distance_band(90, CrossingParams(distance_m=100, partition_cell_m=100)) == "40-100m"


@pytest.mark.parametrize("a, b", [("alice", "bob"), ("a|b", "c"), ("1:x", "1:y"), ("", "z"), ("ü", "u")])
def test_pair_key_is_order_free_and_reversible(a, b):
    assert pair_key(a, b) == pair_key(b, a)
    assert split_pair_key(pair_key(a, b)) == tuple(sorted((a, b)))


def test_pair_key_rejects_same_user():
    with pytest.raises(ValueError, match="'x' twice"):
        pair_key("x", "x")


def test_crossing_views_and_order():
    c = Crossing("a", "b", 10.0, "881fb46625fffff", "<50m")
    va, vb = c.views()
    assert (va.user, va.other, vb.user, vb.other) == ("a", "b", "b", "a")
    assert va.place == vb.place == c.place and va.ts == vb.ts == 10.0
    with pytest.raises(ValueError, match="user_a='b' must sort before user_b='a'"):
        Crossing("b", "a", 1.0, "x", "<50m")


# --------------------------------------------------------------------------- edge-case table

LAT0 = 48.85
DLON_AT_D = exact_d_lon(LAT0, P.distance_m)
NEXT_LON = float(np.nextafter(DLON_AT_D, 2.0))

EDGE_CASES = [
    # id, rows, expected pairs
    ("exactly-D", [("a", 0, LAT0, 0.0), ("b", 0, LAT0, DLON_AT_D)], {("a", "b")}),
    ("just-over-D", [("a", 0, LAT0, 0.0), ("b", 0, LAT0, NEXT_LON)], set()),
    ("exactly-T", [("a", 1_700_000_000.0, 1.0, 1.0), ("b", 1_700_000_300.0, 1.0, 1.0)], {("a", "b")}),
    ("just-over-T", [("a", 1_700_000_000.0, 1.0, 1.0), ("b", 1_700_000_300.001, 1.0, 1.0)], set()),
    ("same-user", [("a", 0, 1.0, 1.0), ("a", 1, 1.0, 1.0)], set()),
    ("accuracy-at-bound", [("a", 0, 1.0, 1.0, 100.0), ("b", 0, 1.0, 1.0, 100.0)], {("a", "b")}),
    ("accuracy-over-bound", [("a", 0, 1.0, 1.0, 100.01), ("b", 0, 1.0, 1.0, 5.0)], set()),
    ("accuracy-unknown", [("a", 0, 1.0, 1.0, None), ("b", 0, 1.0, 1.0, None)], {("a", "b")}),
    ("antimeridian", [("a", 0, 0.0, 179.9995), ("b", 0, 0.0, -179.9995)], {("a", "b")}),
    ("antimeridian-180", [("a", 0, 10.0, 180.0), ("b", 0, 10.0, -180.0)], {("a", "b")}),
    ("antimeridian-far", [("a", 0, 0.0, 179.99), ("b", 0, 0.0, -179.99)], set()),
    # lon 180 is -180 (cell 0) while the other pings are just west of it: the batch grid once took
    # 180 as the eastern end of the pings' extent and failed (found by the oracle property)
    ("antimeridian-180-and-west", [("a", 0, 0.0, 180.0), ("b", 0, 0.0, 179.999591)], {("a", "b")}),
    ("antimeridian-180-both-sides", [("a", 0, 0.0, 180.0), ("b", 0, 0.0, 179.9996), ("c", 9, 0.0, -179.9996)],
     {("a", "b"), ("a", "c"), ("b", "c")}),
    ("north-pole-across", [("a", 0, 89.999, 0.0), ("b", 0, 89.999, 180.0)], {("a", "b")}),
    ("near-pole-89.99", [("a", 0, 89.99, 0.0), ("b", 0, 89.99, 1.0)], {("a", "b")}),
    ("near-pole-89.99-far", [("a", 0, 89.99, 0.0), ("b", 0, 89.99, 30.0)], set()),
    ("south-pole", [("a", 0, -90.0, 0.0), ("b", 0, -89.998, 77.0)], {("a", "b")}),
    ("three-users", [("a", 0, 1.0, 1.0), ("b", 60, 1.0, 1.001), ("c", 120, 1.0, 1.002)], {("a", "b"), ("b", "c"), ("a", "c")}),
]


@pytest.mark.parametrize("rows, expected", [pytest.param(r, e, id=i) for i, r, e in EDGE_CASES])
def test_edge_cases_batch_oracle_and_stream_agree(rows, expected):
    df = frame(rows)
    assert brute_force_pairs(df, P) == expected
    assert pairs_of(detect_crossings(df, P)) == expected
    assert pairs_of(stream_crossings(df, P)[0]) == expected


def test_exactly_d_is_really_exactly_d():
    assert haversine_m(LAT0, 0.0, LAT0, DLON_AT_D) <= P.distance_m < haversine_m(LAT0, 0.0, LAT0, NEXT_LON)


# --------------------------------------------------------------------------- zones

NOTRE_DAME = (48.8530, 2.3499)
ZONE_CASES = [
    ("ping-inside-zone", [("a", 0, *NOTRE_DAME), ("b", 0, NOTRE_DAME[0] + 0.0015, NOTRE_DAME[1])], set()),
    # 120 m on either side of a 110 m zone: both pings outside, midpoint inside
    ("midpoint-inside-zone", [("a", 0, NOTRE_DAME[0] - 0.00108, NOTRE_DAME[1]), ("b", 0, NOTRE_DAME[0] + 0.00108, NOTRE_DAME[1])], set()),
    ("outside-zones", [("a", 0, 48.8600, 2.3400), ("b", 0, 48.8601, 2.3401)], {("a", "b")}),
]


@pytest.mark.parametrize("rows, expected", [pytest.param(r, e, id=i) for i, r, e in ZONE_CASES])
def test_zones_exclude_crossings(rows, expected):
    df = frame(rows)
    assert brute_force_pairs(df, P, ZONES) == expected
    assert pairs_of(detect_crossings(df, P, ZONES)) == expected
    assert pairs_of(stream_crossings(df, P, ZONES)[0]) == expected
    assert brute_force_pairs(df, P) == {("a", "b")}  # without zones they do cross


def test_zones_from_geojson(tmp_path):
    doc = json.loads((GEO_DIR / "data" / "zones-paris-sample.geojson").read_text())
    assert {f["properties"]["category"] for f in doc["features"]} == {"health", "religion"}
    assert ZONES.contains(48.8385, 2.3640) and ZONES.contains(48.8420, 2.3551) and not ZONES.contains(48.8600, 2.3400)
    assert list(SensitiveZones.empty().contains([1.0, 2.0], [3.0, 4.0])) == [False, False]
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "Feature"}))
    with pytest.raises(ValueError, match="type='Feature'"):
        SensitiveZones.from_geojson(bad)


# --------------------------------------------------------------------------- cooldown and place


def test_batch_reports_the_earliest_crossing_of_each_cooldown_period():
    rows = []
    for t in (0, 1000, 3600, 3700, 7199, 7300):
        rows += [("a", float(t), 1.0, 1.0), ("b", float(t), 1.0, 1.0)]
    rows += [("c", 50.0, 1.0, 1.0)]
    out = detect_crossings(frame(rows), P)
    ab = out[(out.user_a == "a") & (out.user_b == "b")]
    assert list(ab.ts) == [0.0, 3600.0, 7300.0]  # periods [0, 3600), [3600, 7200), [7200, 10800)
    assert set(out[out.user_b == "c"].ts) == {50.0}
    assert list(out.ts) == sorted(out.ts)


def test_pair_cooldown_offer_purge_snapshot():
    cd = PairCooldown(P)
    c = lambda a, b, t: Crossing(a, b, t, "p", "<50m")  # noqa: E731
    assert [cd.offer(c("a", "b", t)) for t in (0, 10, 3599.9, 3600, 7000, 7200)] == [True, False, False, True, False, True]
    assert cd.offer(c("a", "c", 5))
    cd2 = PairCooldown.restore(json.loads(json.dumps(cd.snapshot())), P)
    assert cd2.snapshot() == cd.snapshot()
    assert not cd2.offer(c("a", "b", 7300))
    assert cd2.purge_user("a") == ["b", "c"]
    assert len(cd2) == 0 and cd2.offer(c("a", "b", 7300))


def test_place_is_h3_of_midpoint_never_the_raw_fix():
    df = frame([("a", 0, 48.85001, 2.35001), ("b", 10, 48.85101, 2.35101)])
    out = detect_crossings(df, P)
    (place,) = out.place
    mlat, mlon = midpoint(48.85001, 2.35001, 48.85101, 2.35101)
    assert place == h3.latlng_to_cell(mlat, mlon, P.place_resolution)
    assert h3.is_valid_cell(place) and h3.get_resolution(place) == 8
    assert "48.85" not in place and "2.35" not in place
    assert set(out.columns) == {"user_a", "user_b", "ts", "place", "distance_band"}
    (streamed,) = stream_crossings(df, P)[0]
    assert streamed.place == place and streamed.ts == 10.0 and streamed.distance_band == "100-250m"
    coarse = CrossingParams(place_resolution=5)
    assert h3.get_resolution(detect_crossings(df, coarse).place[0]) == 5


def test_invalid_input_names_the_value():
    with pytest.raises(ValueError, match=r"lat=91.0 \(row 1\) is outside \[-90, 90\]"):
        detect_crossings(frame([("a", 0, 1.0, 1.0), ("b", 0, 91.0, 1.0)]), P)
    with pytest.raises(ValueError, match="lack"):
        detect_crossings(pd.DataFrame({"user_id": ["a"], "ts": [0.0]}), P)


def test_empty_and_single_inputs():
    assert detect_crossings(frame([]), P).empty
    assert detect_crossings(frame([("a", 0, 1.0, 1.0)]), P).empty


# --------------------------------------------------------------------------- streaming details


def test_cell_detector_late_evict_purge_memory():
    det = CellDetector(P)
    fix = lambda u, t, lat=1.0: Fix(u, t, lat, 1.0)  # noqa: E731
    key = route(fix("a", 0))[0][0]
    assert det.add(fix("a", 1000.0), key, key) == []
    late = det.add(fix("b", 1000.0 - P.lateness_s - 1), key, key)
    assert isinstance(late, LateFix) and late.watermark == 1000.0 - P.lateness_s
    (c,) = det.add(fix("b", 900.0), key, key)  # within lateness: still matched
    assert (c.user_a, c.user_b, c.ts) == ("a", "b", 1000.0)
    assert det.live_pings == 2
    assert det.purge_user("a") == 1 and det.purge_user("a") == 0
    assert [(c.user_a, c.user_b) for c in det.add(fix("c", 1001.0), key, key)] == [("b", "c")]  # a is gone
    det.add(fix("d", 5000.0), key, key)
    assert det.evict() == 2 and det.live_pings == 1
    with pytest.raises(ValueError, match="home_key='9:9' > key='0:0'"):
        det.add(fix("e", 5000.0), "9:9", "0:0")


@settings(max_examples=60, deadline=None)
@given(times=st.lists(st.tuples(st.floats(0.0, 3000.0), st.integers(0, 30)), min_size=1, max_size=120),
       cut=st.floats(0.0, 4000.0))
def test_evict_removes_exactly_the_pings_older_than_the_horizon(times, cut):
    """The bucketed eviction index finds every old ping a scan of all keys would find, and nothing else."""
    det = CellDetector(P)
    times = sorted(times)  # in time order: nothing is late
    for t, cell in times:
        key = f"1:{cell}"
        det.add(Fix(f"u{cell}-{t}", t, 1.0 + cell * 0.01, 1.0), key, key)
    horizon = min(cut, det.watermark) - P.window_s - 1.0  # as evict() computes it (1 s of slack)
    # a scan of every key (a key's state may already have dropped old pings while growing)
    stored = [t for s in det._keys.values() for t in s.data[_TS, : s.n].tolist()]
    old = sum(t < horizon for t in stored)
    assert det.evict(cut) == old
    assert det.live_pings == len(stored) - old
    assert all(s.data[_TS, : s.n].min() >= horizon for s in det._keys.values() if s.n)


@settings(max_examples=60, deadline=None)
@given(times=st.lists(st.tuples(st.floats(0.0, 3000.0), st.integers(0, 30)), min_size=1, max_size=120),
       batch=st.integers(1, 50), cut=st.floats(0.0, 4000.0))
def test_evict_after_batches_removes_exactly_the_pings_older_than_the_horizon(times, batch, cut):
    """The same with add_many, in batches whose fixes span any time range (arrival order random)."""
    det = CellDetector(P)
    for s in range(0, len(times), batch):
        chunk = times[s : s + batch]
        keys = [f"1:{cell}" for _, cell in chunk]
        det.add_many([f"u{cell}-{t}" for t, cell in chunk], [t for t, _ in chunk],
                     [1.0 + cell * 0.01 for _, cell in chunk], [1.0] * len(chunk), [None] * len(chunk), keys, keys)
    horizon = min(cut, det.watermark) - P.window_s - 1.0
    stored = [t for s in det._keys.values() for t in s.data[_TS, : s.n].tolist()]
    old = sum(t < horizon for t in stored)
    assert det.evict(cut) == old
    assert det.live_pings == len(stored) - old


def test_fixes_years_apart_in_one_batch_cost_no_more_memory_than_close_ones():
    """A ping with a years-old timestamp (not late before the watermark exists) next to a current one
    in the same key must not make the eviction index grow with the gap between them."""
    det = CellDetector(P)
    ts = [1_600_000_000.0, 1_600_000_000.0 + 365 * 86400.0]  # one year apart, same key
    det.add_many(["a", "b"], ts, [1.0, 1.0], [1.0, 1.0], [None, None], ["1:1", "1:1"], ["1:1", "1:1"])
    assert det.live_pings == 2
    assert det.memory_bytes() < 10_000
    assert det.evict() == 1 and det.live_pings == 1


def test_cell_detector_memory_per_live_ping():
    rng = np.random.default_rng(5)
    det = CellDetector(P)
    n = 6_000
    lat = 48.85 + rng.uniform(-0.03, 0.03, n)
    lon = 2.35 + rng.uniform(-0.045, 0.045, n)
    for i in range(n):
        f = Fix(f"user-{rng.integers(0, 3000)}", i * 0.1, lat[i], lon[i])
        keys = route(f, P)
        for key, _ in keys:
            det.add(f, keys[0][0], key)
    assert det.live_pings > 1000
    assert det.memory_bytes() / det.live_pings <= 300


_coords = st.tuples(
    st.one_of(st.floats(-90.0, 90.0), st.sampled_from([-90.0, 90.0, 0.0, 89.999, -89.999])),
    st.one_of(st.floats(-180.0, 180.0), st.sampled_from([-180.0, 180.0, 179.9999, -179.9999, 0.0])),
    st.one_of(st.none(), st.floats(0.0, 200.0)),
)


@settings(max_examples=150, deadline=None)
@given(fixes=st.lists(_coords, max_size=40),
       shape=st.sampled_from([(250.0, 1000.0), (900.0, 1000.0), (1.0, 1000.0), (5000.0, 5000.0), (250.0, 250.0)]))
def test_route_many_equals_route_fix_by_fix(fixes, shape):
    """The vectorized router gives every fix exactly route()'s keys, in route()'s order."""
    params = CrossingParams(distance_m=shape[0], partition_cell_m=shape[1])
    lat, lon, acc = ([f[i] for f in fixes] for i in range(3))
    got = route_many(lat, lon, acc, params)
    expected = [(i, key, home) for i, (la, lo, a) in enumerate(fixes)
                for key, home in route(Fix("u", 0.0, la, lo, a), params)]
    assert list(zip(got.fix.tolist(), got.keys, got.home.tolist())) == expected


def test_route_many_rejects_out_of_range():
    with pytest.raises(ValueError, match="lat=95.0"):
        route_many([48.0, 95.0], [2.0, 2.0])
    with pytest.raises(ValueError, match="lon=-181.0"):
        route_many([48.0], [-181.0])
    assert route_many([], []).keys == []


def test_route_home_first_and_guests_greater():
    f = Fix("a", 0.0, 48.85, 2.35)
    keys = route(f, P)
    assert keys[0][1] and all(not home and k > keys[0][0] for k, home in keys[1:])
    assert route(Fix("a", 0.0, 48.85, 2.35, accuracy_m=500.0), P) == []
    with pytest.raises(ValueError, match="lat=95.0"):
        route(Fix("a", 0.0, 95.0, 2.35), P)


# --------------------------------------------------------------------------- properties

CENTERS = [(48.85, 2.35), (0.0, 179.999), (0.0, -180.0), (89.99, 0.0), (-89.999, 45.0), (60.0, 179.995), (48.8530, 2.3499)]


@st.composite
def ping_sets(draw, max_size=60):
    """Clustered pings (so crossings happen) around one center, some near cell borders."""
    lat0, lon0 = draw(st.sampled_from(CENTERS))
    spread = draw(st.sampled_from([0.0005, 0.002, 0.006]))
    n = draw(st.integers(0, max_size))
    n_users = draw(st.integers(1, 8))
    rows = []
    for _ in range(n):
        dlat = draw(st.floats(-spread, spread, allow_nan=False))
        dlon = draw(st.floats(-spread, spread, allow_nan=False)) * 3
        lat = min(90.0, max(-90.0, lat0 + dlat))
        lon = (lon0 + dlon + 180.0) % 360.0 - 180.0
        t = draw(st.sampled_from([0.0, 100.0, 300.0, 600.0, 3600.0])) + draw(st.sampled_from([0.0, 0.5, 299.0]))
        acc = draw(st.sampled_from([None, 5.0, 100.0, 150.0]))
        rows.append((f"u{draw(st.integers(0, n_users - 1))}", t, lat, lon, acc))
    return frame(rows)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(df=ping_sets(), cooldown_s=st.sampled_from([0.0, 250.0, 3600.0]), zones=st.booleans())
def test_reported_records_equal_the_oracle_in_any_arrival_order(df, cooldown_s, zones):
    """Record for record: the batch search reports, per pair and cooldown period, the crossing the
    brute-force oracle picks; the stream (pings in any order, pre-filter, then the pair stage)
    leaves each pair the batch's latest record."""
    params = CrossingParams(cooldown_s=cooldown_s)
    z = ZONES if zones else None
    batch = detect_crossings(df, params, z)
    oracle = brute_force_crossings(df, params, z)
    got = {(a, b, float(cooldown_period(t, cooldown_s))): (t, place, band)
           for a, b, t, place, band in batch.itertuples(index=False)}
    assert got == oracle
    latest = {(a, b): (t, place, band) for a, b, t, place, band in gc.latest_per_pair(batch).itertuples(index=False)}
    found, _ = stream_crossings(df, params, z)
    for order in (found, found[::-1], sorted(found, key=lambda c: (c.place, -c.ts))):
        assert _final_records(order, params) == latest


@SETTINGS
@given(df=ping_sets())
def test_batch_pairs_equal_oracle(df):
    assert pairs_of(detect_crossings(df, P)) == brute_force_pairs(df, P)
    assert gc.detect_pairs(df, P) == brute_force_pairs(df, P)


@SETTINGS
@given(df=ping_sets())
def test_batch_pairs_equal_oracle_search_index(df):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search, "_matching_pairs", functools.partial(search._matching_pairs, force_search=True))
        assert pairs_of(detect_crossings(df, P)) == brute_force_pairs(df, P)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=ping_sets(), d=st.sampled_from([1.0, 60.0, 500.0]), t=st.sampled_from([0.0, 100.0]))
def test_batch_pairs_equal_oracle_other_params(df, d, t):
    params = CrossingParams(distance_m=d, window_s=t, partition_cell_m=max(d, 300.0))
    assert pairs_of(detect_crossings(df, params)) == brute_force_pairs(df, params)
    assert pairs_of(stream_crossings(df, params)[0]) == brute_force_pairs(df, params)


@SETTINGS
@given(df=ping_sets())
def test_batch_with_zones_equals_oracle(df):
    assert pairs_of(detect_crossings(df, P, ZONES)) == brute_force_pairs(df, P, ZONES)
    assert gc.detect_pairs(df, P, ZONES) == brute_force_pairs(df, P, ZONES)


def _ping_pair_multiset(df, params, zones=None):
    """Every matching ping pair as (a, b, ts, band), from the batch matcher without cooldown."""
    pings = search._prepare(df, params, zones)
    i, j, d = search._matching_pairs(pings, params)
    if zones and i.size:
        ok = _outside_zones(pings.lat[i], pings.lon[i], pings.lat[j], pings.lon[j], zones)[2]
        i, j, d = i[ok], j[ok], d[ok]
    names = pings.names
    out = collections.Counter()
    for x, y, dd in zip(i, j, d):
        a, b = sorted((names[pings.user[x]], names[pings.user[y]]))
        out[(a, b, float(max(pings.ts[x], pings.ts[y])), distance_band(dd, params))] += 1
    return out


@SETTINGS
@given(df=ping_sets(), cell_m=st.sampled_from([250.0, 400.0, 1000.0]))
def test_partitioned_stream_is_exact(df, cell_m):
    params = CrossingParams(partition_cell_m=cell_m)
    found, _ = stream_crossings(df, params, ZONES)
    got = collections.Counter((c.user_a, c.user_b, c.ts, c.distance_band) for c in found)
    assert got == _ping_pair_multiset(df, params, ZONES)  # every ping pair once: no loss, no duplicate
    assert pairs_of(found) == brute_force_pairs(df, params, ZONES)
    cd = PairCooldown(params)
    assert {(c.user_a, c.user_b) for c in sorted(found, key=lambda c: c.ts) if cd.offer(c)} == pairs_of(found)


@SETTINGS
@given(df=ping_sets(), cut=st.floats(0.0, 1.0))
def test_purge_user_removes_user_from_later_results(df, cut):
    if df.empty:
        return
    victim = df.user_id.iloc[0]
    found, purged_at = stream_crossings(df, P, purge=(victim, int(cut * len(df))))
    later = found[purged_at:] if purged_at is not None else []
    assert all(victim not in (c.user_a, c.user_b) for c in later)


# --------------------------------------------------------------------------- architecture


def test_geo_never_imports_kafka_or_faust():
    banned = {"faust", "kafka", "aiokafka"}
    for path in GEO_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & banned, f"{path} imports {names}"
    code = (
        "import sys, pkgutil, importlib, geo\n"
        "for m in pkgutil.walk_packages(geo.__path__, 'geo.'): importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'faust', 'kafka', 'aiokafka'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=GEO_DIR.parent)
    assert out.stdout.strip() == "[]"


def test_watermark_waits_for_the_slowest_source():
    """A fix from a lagging upstream partition is not late while that partition is behind."""
    from geo.crossings import CellDetector, CrossingParams, Fix, LateFix, route

    params = CrossingParams(lateness_s=60)
    det = CellDetector(params, sources=[0, 1])
    a = Fix("a", 10_000.0, 48.85, 2.35)
    b = Fix("b", 9_000.0, 48.85, 2.35)  # 1000 s older, from another source
    key = route(a, params)[0][0]
    assert det.add(a, key, key, source=0) == []
    assert det.watermark == -math.inf  # source 1 has sent nothing yet
    found = det.add(b, key, key, source=1)
    assert not isinstance(found, LateFix)
    assert det.watermark == 9_000.0 - 60
    # Without sources the same fix is late.
    single = CellDetector(params)
    single.add(a, key, key)
    assert isinstance(single.add(b, key, key), LateFix)
    # Once every source has moved on, old fixes are late again.
    det.add(Fix("c", 10_100.0, 48.85, 2.35), key, key, source=1)
    assert isinstance(det.add(Fix("d", 9_500.0, 48.85, 2.35), key, key, source=0), LateFix)


def test_pair_cooldown_expire_forgets_old_pairs_only():
    from geo.crossings import Crossing, CrossingParams, PairCooldown

    cd = PairCooldown(CrossingParams(cooldown_s=100))
    assert cd.offer(Crossing("a", "b", 10.0, "x", "<50m"))
    assert cd.offer(Crossing("a", "c", 500.0, "x", "<50m"))
    assert cd.expire(400.0) == 1
    assert cd.partners_of("a") == {"c"} and cd.partners_of("b") == frozenset()
    assert cd.offer(Crossing("a", "b", 60.0, "x", "<50m"))  # forgotten: reported again
    assert not cd.offer(Crossing("a", "c", 550.0, "x", "<50m"))  # kept: still cooling down


def test_pair_cooldown_forgets_who_met_whom_by_last_report():
    H = 3600.0
    cd = PairCooldown(CrossingParams(cooldown_s=100))
    assert cd.offer_pair("a", "b", 0.0, reported_at=10 * H + 5)
    assert cd.offer_pair("a", "c", 0.0, reported_at=10 * H + 6)
    assert cd.offer_pair("b", "c", 0.0)  # no reported_at: never forgotten by report time
    assert not cd.offer_pair("a", "b", 50.0, reported_at=12 * H)  # in cooldown: not a report
    assert cd.offer_pair("a", "c", 200.0, reported_at=12 * H)  # reported again, later
    assert cd.forget_reported_before(10 * H + 4) == []  # reported after the cutoff
    assert cd.forget_reported_before(10 * H + 3599) == []  # before it, but in its hour: up to an hour late
    assert cd.forget_reported_before(11 * H) == [("a", "b")]
    assert cd.partners_of("a") == {"c"} and cd.partners_of("b") == {"c"}
    assert cd.offer_pair("a", "b", 60.0, reported_at=12 * H)  # forgotten: its next crossing is reported
    restored = PairCooldown.restore(json.loads(json.dumps(cd.snapshot())), cd.params)
    assert restored.snapshot() == cd.snapshot()
    for state in (cd, restored):
        assert sorted(state.forget_reported_before(13 * H)) == [("a", "b"), ("a", "c")]
        assert state.partners_of("a") == frozenset() and state.partners_of("c") == {"b"} and len(state) == 1


QUARTERS = st.integers(0, 4 * 4).map(lambda q: q * 900.0)  # a coarse grid: pairs re-reported in a later
# hour, cutoffs on, just after and between report hours come up often
OFFERS = st.tuples(st.just("offer"), st.sampled_from("abc"), st.sampled_from("abcd"),
                   st.integers(0, 20).map(lambda k: k * 300.0), st.booleans(), QUARTERS)
FORGETS = st.tuples(st.just("forget"), QUARTERS, st.sampled_from([0.0, 1.0]))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.one_of(
    OFFERS, OFFERS, OFFERS, OFFERS, FORGETS, FORGETS,
    st.tuples(st.just("purge"), st.sampled_from("abcd")),
    st.tuples(st.just("restore"))), min_size=20, max_size=60))
def test_pair_cooldown_keeps_a_pair_exactly_until_an_hour_after_its_last_report(ops):
    """Against a model, with a wall clock that moves on between offers: a pair reported with
    reported_at is forgotten by forget_reported_before(t) iff its last report was before t's hour;
    partners, cooldown and restores agree with the model."""
    H, cooldown_s = 3600.0, 600.0
    cd = PairCooldown(CrossingParams(cooldown_s=cooldown_s))
    last: dict[tuple[str, str], float] = {}
    hour: dict[tuple[str, str], int | None] = {}
    clock = 0.0
    for op in ops:
        if op[0] == "offer":
            _, u, v, ts, with_clock, advance = op
            clock += advance
            at = clock if with_clock else None
            if u == v:
                continue
            pair = (min(u, v), max(u, v))
            p, q = ts // cooldown_s, last[pair] // cooldown_s if pair in last else None
            expect = pair not in last or p > q or (p == q and ts <= last[pair])  # no place: ties go through
            assert cd.offer_pair(*pair, ts, reported_at=at) == expect
            if expect:
                last[pair] = ts
                if at is not None:
                    hour[pair] = int(at // H)
                else:
                    hour.setdefault(pair, None)
        elif op[0] == "forget":
            before = clock - op[1] + op[2]
            cutoff = int(before // H)
            gone = {p for p in last if hour[p] is not None and hour[p] < cutoff}
            assert set(cd.forget_reported_before(before)) == gone
            for p in gone:
                del last[p], hour[p]
        elif op[0] == "purge":
            partners = sorted({x for p in last if op[1] in p for x in p} - {op[1]})
            assert cd.purge_user(op[1]) == partners
            for p in [p for p in last if op[1] in p]:
                del last[p], hour[p]
        else:
            cd = PairCooldown.restore(json.loads(json.dumps(cd.snapshot())), cd.params)
        assert len(cd) == len(last)
        for u in "abcd":
            assert cd.partners_of(u) == {x for p in last if u in p for x in p} - {u}


# --------------------------------------------------------------------------- batched streaming


@st.composite
def routed_arrivals(draw):
    """Pings in a shuffled-ish arrival order, each sent to every key route() gives, with a source."""
    df = draw(ping_sets())
    jitter = draw(st.lists(st.sampled_from([0.0, 30.0, 200.0, 900.0]), min_size=len(df), max_size=len(df)))
    df = df.assign(arrival=df.ts + jitter).sort_values("arrival", kind="stable")
    n_sources = draw(st.integers(0, 3))
    rows = []
    for row in df.itertuples(index=False):
        acc = None if pd.isna(row.accuracy_m) else float(row.accuracy_m)
        keys = route(Fix(row.user_id, float(row.ts), float(row.lat), float(row.lon), acc), P)
        src = draw(st.integers(0, n_sources - 1)) if n_sources else None
        for key, _ in keys:
            rows.append((row.user_id, float(row.ts), float(row.lat), float(row.lon), acc, keys[0][0], key, src))
    return rows, n_sources


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(arrivals=routed_arrivals(), markers=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 2),
                                                               st.floats(-500.0, 5000.0)), max_size=6))
def test_a_progress_marker_counts_like_a_fix_of_its_source_that_matches_nothing(arrivals, markers):
    """advance(source, ts) moves the watermark as a fix of that source at ts would, and changes no
    crossing: late fixes and crossings are those of a detector sent such a fix, far from everything."""
    rows, n_sources = arrivals
    with_markers = CellDetector(P, sources=range(n_sources))
    with_ghosts = CellDetector(P, sources=range(n_sources))
    got, expected = [], []
    done = 0
    for j, (at, source, ts) in enumerate(sorted(markers) + [(len(rows), None, None)]):
        part = rows[done:max(done, at)]
        done = max(done, at)
        if part:
            cols = list(zip(*part))
            srcs = cols[7] if n_sources else None
            got += with_markers.add_many(*cols[:7], sources=srcs)
            expected += with_ghosts.add_many(*cols[:7], sources=srcs)
        if source is None or (n_sources and source >= n_sources):
            continue
        with_markers.advance(source if n_sources else None, ts)
        ghost = with_ghosts.add_many([f"ghost{j}"], [ts], [-60.0 + j], [0.0], [None], ["ghost"], ["ghost"],
                                     sources=[source] if n_sources else None)
        assert ghost[0] == [] or isinstance(ghost[0], LateFix)
    assert got == expected
    assert with_markers.watermark == with_ghosts.watermark


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(arrivals=routed_arrivals(), cuts=st.lists(st.integers(0, 400), max_size=6), zones=st.booleans(),
       cooldown_s=st.sampled_from([None, 0.0, 250.0, 3600.0]))
def test_add_many_equals_one_by_one(arrivals, cuts, zones, cooldown_s):
    """The worker's batched add gives, fix for fix, what add() gives one at a time (lateness included);
    with a cooldown (the pre-filter), a part of those crossings that leaves every pair the same final record."""
    rows, n_sources = arrivals
    z = ZONES if zones else None
    one = CellDetector(P, z, sources=range(n_sources))
    many = CellDetector(P, z, sources=range(n_sources))
    cd_one = cd_many = None
    if cooldown_s is not None:
        cd_one, cd_many = (GroupBests(CrossingParams(cooldown_s=cooldown_s)) for _ in range(2))
    expected = [one.add(Fix(u, t, la, lo, acc), home, key, source=src) for u, t, la, lo, acc, home, key, src in rows]
    got = []
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    for lo_, hi_ in zip(bounds, bounds[1:]):
        part = rows[lo_:hi_]
        cols = list(zip(*part))
        got.extend(many.add_many(*cols[:7], sources=cols[7] if n_sources else None, cooldown=cd_many))
    if cd_many is None:
        assert got == expected
    else:
        _assert_prefiltered(got, expected, cd_many.params)
    assert many.watermark == one.watermark
    many.evict(), one.evict()
    assert many.live_pings == one.live_pings


def test_add_many_cooldown_reports_new_pairs_after_user_codes_are_compacted():
    """Compaction renumbers users, so new pairs reuse the numbers of old ones: none of them may be
    taken for an old pair still cooling down (e.g. by a cache keyed by those numbers)."""
    det, cooldown = CellDetector(P), GroupBests(CrossingParams(cooldown_s=3600.0))

    def pairs_meeting(prefix: str, t: float, n_pairs: int) -> int:
        users, ts, lat, lon, keys = [], [], [], [], []
        for k in range(n_pairs):
            for u in (f"{prefix}{2 * k}", f"{prefix}{2 * k + 1}"):
                users.append(u), ts.append(t), lat.append(10.0 + k * 0.01), lon.append(10.0)
                keys.append(route(Fix(u, t, lat[-1], 10.0), P)[0][0])
        got = det.add_many(users, ts, lat, lon, [None] * len(users), keys, keys, cooldown=cooldown)
        return sum(len(r) for r in got)

    det.add_many(["loner"], [0.0], [-40.0], [-40.0], [None], ["k"], ["k"])  # so old and new pairs get the same numbers
    assert pairs_meeting("old-", 0.0, 600) == 600
    det.add_many(["late-walker"], [1000.0], [-40.0], [-40.0], [None], ["k"], ["k"])
    det.evict()  # every old ping expired: the 1202 users are compacted away
    assert len(det._users) < 100
    assert pairs_meeting("new-", 1000.0, 600) == 600  # fresh users, fresh pairs: all reported


@st.composite
def crowded_arrivals(draw):
    """A few users pinging again and again within metres of one spot, in time order: the same
    pairs match in batch after batch."""
    n = draw(st.integers(2, 60))
    users = draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    steps = draw(st.lists(st.floats(0.0, 120.0), min_size=n, max_size=n))
    offsets = draw(st.lists(st.tuples(st.floats(-1e-4, 1e-4), st.floats(-1e-4, 1e-4)), min_size=n, max_size=n))
    rows, t = [], 0.0
    for u, step, (dlat, dlon) in zip(users, steps, offsets):
        t += step
        fix = Fix(u, t, 48.85 + dlat, 2.35 + dlon, None)
        keys = route(fix, P)
        for key, _ in keys:
            rows.append((u, t, fix.lat, fix.lon, None, keys[0][0], key, None))
    return rows, 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(arrivals=st.one_of(crowded_arrivals(), routed_arrivals()), cuts=st.lists(st.integers(0, 120), max_size=8),
       ops=st.lists(st.one_of(st.tuples(st.just("purge"), st.integers(0, 7)),
                              st.tuples(st.just("expire"), st.floats(-100.0, 7000.0)),  # close groups
                              st.tuples(st.just("restore"), st.just(0))), max_size=8),
       cooldown_s=st.sampled_from([0.0, 250.0, 3600.0]))
def test_add_many_cooldown_stays_exact_when_the_cooldown_forgets_pairs(arrivals, cuts, ops, cooldown_s):
    """Between batches the pre-filter forgets pairs (a user purged from it alone, expire, a restored
    copy): what add_many lets through still leaves every pair the final record of all its crossings
    (any cache of pair times in the detector must never hold back what the pre-filter has forgotten)."""
    rows, n_sources = arrivals
    params = CrossingParams(cooldown_s=cooldown_s)
    one, many = CellDetector(P, sources=range(n_sources)), CellDetector(P, sources=range(n_sources))
    cd_many = GroupBests(params)
    all_expected, all_got = [], []
    users = sorted({r[0] for r in rows}) or ["nobody"]
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    for step, (lo_, hi_) in enumerate(zip(bounds, bounds[1:])):
        part = rows[lo_:hi_]
        all_expected += [one.add(Fix(u, t, la, lo, acc), home, key, source=src)
                         for u, t, la, lo, acc, home, key, src in part]
        cols = list(zip(*part))
        all_got += many.add_many(*cols[:7], sources=cols[7] if n_sources else None, cooldown=cd_many)
        if step < len(ops):
            op, arg = ops[step]
            if op == "purge":
                cd_many.purge_user(users[arg % len(users)])
            elif op == "expire":
                cd_many.close(arg)  # groups closed early: their bests move to the closed pre-filter
            else:
                cd_many = GroupBests(params)  # a rebuilt detector's pre-filter knows less than the lost one
    _assert_prefiltered(all_got, all_expected, params)


def _final_records(crossings, params: CrossingParams) -> dict:
    """Each pair's final record after offering `crossings` (places known) to a fresh PairCooldown: the pair stage."""
    stage = PairCooldown(params)
    for c in crossings:
        stage.offer(c)
    return {pair: (t, place, band) for pair in stage._last for t, _, place, band in [stage.current(*pair)]}


def _assert_prefiltered(got, expected, params: CrossingParams) -> None:
    """What the pre-filter let through, fix for fix, is part of what matched, and gives the same final records."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if isinstance(e, LateFix):
            assert g == e
        else:
            assert not collections.Counter(g) - collections.Counter(e)
    flat = lambda results: [c for r in results if not isinstance(r, LateFix) for c in r]  # noqa: E731
    everything = flat(expected)
    assert _final_records(flat(got), params) == _final_records(everything, params)
    assert _final_records(everything, params) == _final_records(reversed(everything), params)  # any order
