"""detect_crossings_chunked: the rows of detect_crossings on the whole frame, from one time chunk at a time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.crossings import CrossingParams, detect_crossings, search
from geo.crossings.search import detect_crossings_chunked
from geo.zones import SensitiveZones

ZONES = SensitiveZones.paris_sample()
LAT0, LON0 = 48.8566, 2.3522  # Paris: the sample zones are there
HOUR0 = 1_700_000_000.0 // 3600 * 3600


@st.composite
def spread_crowds(draw, max_size=60):
    """Hot spots (some near partition-key borders) and a few people meeting there again and again over a few
    hours, in any order; times just around slice, chunk and period boundaries, or anywhere."""
    rows = []
    n_users = draw(st.integers(2, 8))
    spots = [(LAT0 + draw(st.floats(-0.01, 0.01)), LON0 + draw(st.floats(-0.015, 0.015))) for _ in range(draw(st.integers(1, 3)))]
    bases = st.sampled_from([0.0, 300.0, 600.0, 900.0, 1000.0, 3600.0, 3900.0, 7200.0])
    offsets = st.sampled_from([-0.7, -0.3, 0.0, 0.2, 0.6, 1.0, 100.0, 299.0])
    for _ in range(draw(st.integers(0, max_size))):
        lat, lon = draw(st.sampled_from(spots))
        spread = draw(st.sampled_from([0.0003, 0.002, 0.008]))
        t = draw(st.one_of(st.builds(float.__add__, bases, offsets), st.floats(0.0, 3 * 3600.0)))
        rows.append((f"u{draw(st.integers(0, n_users - 1))}", HOUR0 + t, lat + draw(st.floats(-spread, spread)),
                     lon + draw(st.floats(-spread, spread)) * 1.5, draw(st.sampled_from([None, 5.0, 150.0]))))
    return pd.DataFrame(rows, columns=["user_id", "ts", "lat", "lon", "accuracy_m"]).astype({"accuracy_m": float})


def chunked(df, params, zones=None, chunk_s=3600.0):
    return pd.concat(list(detect_crossings_chunked(df, params, zones, chunk_s=chunk_s)), ignore_index=True)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(df=spread_crowds(), limit=st.sampled_from([0, 1, 2, 3]), zones=st.booleans(),
       cooldown_s=st.sampled_from([0.0, 600.0, 1000.0, 3600.0]), window_s=st.sampled_from([300.0, 120.0, 0.5]),
       chunk_s=st.sampled_from([1.0, 300.0, 700.0, 1800.0]))
def test_chunks_give_the_rows_of_the_whole_frame(df, limit, zones, cooldown_s, window_s, chunk_s):
    """Any chunk length (cutting the data several times), cooldown (multiple of the chunks or not), window and
    crowd limit: the same rows in the same order, crowd rule included."""
    params = CrossingParams(crowd_users=limit, cooldown_s=cooldown_s, window_s=window_s)
    z = ZONES if zones else None
    pd.testing.assert_frame_equal(chunked(df, params, z, chunk_s), detect_crossings(df, params, z))


def test_a_crowd_in_the_context_of_the_next_chunk_still_counts():
    """Four people together just before a chunk boundary are a crowd (crowd_users=3): a pair of them
    with one ping on each side of the boundary is a crowd pair in the chunk that reports it too."""
    t0 = HOUR0 + 3600.0  # a chunk boundary for chunk_s=3600
    rows = [(f"fan{i}", t0 - 200.0 + i, LAT0, LON0 + i * 1e-5, None) for i in range(4)]
    rows += [("fan0", t0 + 10.0, LAT0, LON0, None)]  # meets fan1..3's pings 190 s earlier, across the boundary
    df = pd.DataFrame(rows, columns=["user_id", "ts", "lat", "lon", "accuracy_m"]).astype({"accuracy_m": float})
    crowd = CrossingParams(crowd_users=3)
    assert detect_crossings(df, crowd).empty and chunked(df, crowd).empty
    free = CrossingParams(crowd_users=0)
    pd.testing.assert_frame_equal(chunked(df, free, chunk_s=1.0), detect_crossings(df, free))
    assert len(detect_crossings(df, free)) == 6 + 3  # every pair before the boundary, and fan0 again after it


def test_the_context_is_whole_slices_when_the_window_is_shorter():
    """window_s=0.5 (slices of 1 s): y's ping 0.3 s before the boundary meets z's after it; x, 0.7 s
    before, is out of the window but in y's slice, which x and y make a crowd (crowd_users=1)."""
    t0 = HOUR0 + 3600.0
    rows = [("x", t0 - 0.7, LAT0, LON0, None), ("y", t0 - 0.3, LAT0, LON0, None), ("z", t0 + 0.2, LAT0, LON0, None)]
    df = pd.DataFrame(rows, columns=["user_id", "ts", "lat", "lon", "accuracy_m"]).astype({"accuracy_m": float})
    params = CrossingParams(window_s=0.5, crowd_users=1)
    assert detect_crossings(df, params).empty
    for chunk_s in (1.0, 3600.0):
        assert chunked(df, params, chunk_s=chunk_s).empty
    assert len(detect_crossings(df, CrossingParams(window_s=0.5, crowd_users=0))) == 2  # x-y and y-z


def test_each_chunk_searches_its_own_pings_and_one_window_before():
    rng = np.random.default_rng(5)
    n = 6000
    df = pd.DataFrame({"user_id": [f"u{i % 300}" for i in range(n)], "ts": HOUR0 + rng.uniform(0, 10 * 3600, n),
                       "lat": LAT0 + rng.uniform(0, 0.01, n), "lon": LON0 + rng.uniform(0, 0.01, n)})
    searched = []
    with pytest.MonkeyPatch.context() as mp:
        real = search._matching_pairs
        mp.setattr(search, "_matching_pairs", lambda pings, *a, **k: searched.append(len(pings.ts)) or real(pings, *a, **k))
        frames = list(detect_crossings_chunked(df.sample(frac=1.0, random_state=1), CrossingParams(), chunk_s=3600.0))
    assert len(searched) == 10 and max(searched) < n / 10 * (1 + 300 / 3600) * 1.2  # an hour and 5 minutes each
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), detect_crossings(df, CrossingParams()))


def test_progress_counts_usable_pings_chunk_by_chunk():
    df = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "ts": [HOUR0, HOUR0 + 10, HOUR0 + 7200, HOUR0 + 7210],
                       "lat": [LAT0] * 4, "lon": [LON0] * 4, "accuracy_m": [5.0, 5.0, 500.0, 5.0]})
    seen = []
    list(detect_crossings_chunked(df, CrossingParams(), progress=lambda done, total: seen.append((done, total))))
    assert seen[-1] == (3, 3) and (2, 3) in seen  # c's ping is not usable


def test_empty_and_bad_chunk_lengths():
    empty = pd.DataFrame({"user_id": pd.Series(dtype=object), "ts": [], "lat": [], "lon": []})
    pd.testing.assert_frame_equal(chunked(empty, CrossingParams()), detect_crossings(empty, CrossingParams()))
    with pytest.raises(ValueError, match="chunk_s=0 must be > 0"):
        detect_crossings_chunked(empty, CrossingParams(), chunk_s=0)


def test_categorical_user_ids_are_their_text():
    df = pd.DataFrame({"user_id": ["b", "a", "c", "a"], "ts": [HOUR0, HOUR0 + 1, HOUR0 + 2, HOUR0 + 3],
                       "lat": [LAT0] * 4, "lon": [LON0] * 4})
    as_categories = df.assign(user_id=pd.Categorical(df.user_id, categories=["c", "zz", "b", "a"]))
    pd.testing.assert_frame_equal(detect_crossings(as_categories, CrossingParams()), detect_crossings(df, CrossingParams()))
