"""Differential privacy over a declared service area: properties the guarantee rests on, and the area itself."""
import json
import math

import h3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymizers.dp import (DPParams, PrivacyBudget, bound_contributions, privacy_budget, publication_threshold,
                            publish_noisy_cells)
from anonymizers.servicearea import MAX_CELLS, ServiceArea

PARENT = h3.latlng_to_cell(48.8566, 2.3522, 7)
RES8 = sorted(h3.cell_to_children(PARENT, 8))  # 7 cells
RES9 = sorted(h3.cell_to_children(PARENT, 9))  # 49 cells
EXACT = 1e9  # epsilon so large that the noise is 0: a = exp(-epsilon / m) underflows, both geometrics are 1


@st.composite
def windows(draw):
    """A window: users seen in some resolution-9 cells under PARENT, and a domain (some of its res-8 cells)."""
    users = draw(st.integers(1, 25))
    users_by_cell: dict[str, set] = {}
    for u in range(users):
        for cell in draw(st.lists(st.sampled_from(RES9), min_size=1, max_size=6, unique=True)):
            users_by_cell.setdefault(cell, set()).add(f"u{u}")
    domain = draw(st.lists(st.sampled_from(RES8), max_size=7, unique=True))
    return users_by_cell, frozenset(domain)


@settings(max_examples=150, deadline=None)
@given(windows(), st.floats(0.05, 5.0), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_no_cell_outside_the_domain_is_ever_published(window, epsilon, m, k, seed):
    users_by_cell, domain = window
    params = DPParams(epsilon=epsilon, max_cells_per_user=m, resolution=8)
    rows = publish_noisy_cells(users_by_cell, params, k, np.random.default_rng(seed), domain)
    assert {r.cell for r in rows} <= domain
    assert all(r.users >= k and r.resolution == 8 for r in rows)


@settings(max_examples=150, deadline=None)
@given(windows(), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_every_domain_cell_gets_a_count_and_each_user_counts_in_at_most_m(window, m, shards, seed):
    """Without noise, only domain cells with users show, and the counts add up to at most cells_per_shard
    per user (at least one each), each no more than the true count."""
    users_by_cell, domain = window
    params = DPParams(epsilon=EXACT, max_cells_per_user=m, resolution=8, shards=shards)
    rows = publish_noisy_cells(users_by_cell, params, 1, np.random.default_rng(seed), domain)
    truth: dict[str, set] = {}
    for cell, users in users_by_cell.items():
        truth.setdefault(h3.cell_to_parent(cell, 8), set()).update(users)
    in_domain = {u for c in domain for u in truth.get(c, ())}
    assert {r.cell for r in rows} <= {c for c in domain if truth.get(c)}
    for r in rows:
        assert 1 <= r.users <= len(truth[r.cell])
    assert sum(r.users for r in rows) <= params.cells_per_shard * len(in_domain)
    # Each user still counted somewhere (the bound keeps min(m, cells) of a user's domain cells).
    assert sum(r.users for r in rows) >= len(in_domain)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(RES9), st.sets(st.integers(0, 30), min_size=1), min_size=1),
       st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_bound_contributions_keeps_each_user_in_at_most_m_cells(users_by_cell, m, seed):
    bounded = bound_contributions(users_by_cell, m, np.random.default_rng(seed))
    cells_of: dict = {}
    for cell, users in bounded.items():
        assert users <= users_by_cell[cell]
        for u in users:
            cells_of.setdefault(u, []).append(cell)
    for u in set().union(*users_by_cell.values()):
        assert len(cells_of[u]) == min(m, sum(u in s for s in users_by_cell.values()))


@settings(max_examples=300, deadline=None)
@given(st.floats(0.05, 10.0), st.integers(1, 8), st.integers(1, 4),
       st.floats(1e-15, 1e-6), st.floats(1e-15, 1e-6))
def test_publication_threshold_is_monotone_in_delta(epsilon, m, shards, d1, d2):
    """A smaller delta never gives a lower threshold, and each is the smallest that keeps the risk <= delta."""
    lo, hi = sorted((d1, d2))
    strict, loose = (publication_threshold(DPParams(epsilon, m, d, shards=shards)) for d in (lo, hi))
    assert strict >= loose
    params = DPParams(epsilon, m, lo, shards=shards)
    a = math.exp(-epsilon / params.sensitivity)
    risk = lambda t: params.sensitivity * a ** (t - 1) / (1 + a)  # noqa: E731
    assert risk(strict) <= lo and (strict == 1 or risk(strict - 1) > lo)


@pytest.mark.parametrize("m, shards, per_shard, sensitivity", [
    (4, 1, 4, 4), (4, 2, 2, 4), (4, 3, 1, 3), (4, 4, 1, 4), (1, 4, 1, 4), (8, 3, 2, 6)])
def test_shards_split_the_bound(m, shards, per_shard, sensitivity):
    params = DPParams(max_cells_per_user=m, shards=shards)
    assert (params.cells_per_shard, params.sensitivity) == (per_shard, sensitivity)


def test_shards_raise_the_threshold_with_the_sensitivity():
    assert publication_threshold(DPParams(1.0, 1, shards=4)) == publication_threshold(DPParams(1.0, 4)) == 60


@pytest.mark.parametrize("shards", [0, -1, 1.5, True])
def test_bad_shards_are_named(shards):
    with pytest.raises(ValueError, match=f"shards={shards!r}"):
        DPParams(shards=shards)


def test_domain_cells_must_be_at_the_resolution():
    with pytest.raises(ValueError, match="has resolution 9, not resolution=8"):
        publish_noisy_cells({RES9[0]: {"a"}}, DPParams(resolution=8), 10, np.random.default_rng(0), RES9[:1])


def test_places_outside_the_domain_do_not_use_up_the_bound():
    inside, outside = RES8[0], RES8[1]
    users_by_cell = {c: {f"u{i}" for i in range(30)} for c in h3.cell_to_children(inside, 9)[:1]}
    users_by_cell.update({c: {f"u{i}" for i in range(30)} for c in h3.cell_to_children(outside, 9)[:1]})
    params = DPParams(epsilon=EXACT, max_cells_per_user=1, resolution=8)
    counts = {r.cell: r.users for r in publish_noisy_cells(users_by_cell, params, 10, np.random.default_rng(0),
                                                            [inside])}
    assert counts == {inside: 30}


def test_empty_domain_cells_are_published_with_noise_alone():
    """Over a domain, a cell no one visited still gets a noisy count: at k = 1 and epsilon = 0.1 some show."""
    rng = np.random.default_rng(4)
    shown = sum(len(publish_noisy_cells({}, DPParams(epsilon=0.1, resolution=8), 1, rng, RES8)) for _ in range(50))
    assert shown > 0


@pytest.mark.parametrize("window_s, per_day", [(3600, 24), (900, 96), (86400, 1), (7 * 3600, 5)])
def test_privacy_budget_per_day(window_s, per_day):
    b = privacy_budget(DPParams(epsilon=0.5), window_s, declared_domain=False)
    assert b == PrivacyBudget(0.5, 1e-6, per_day)
    assert math.isclose(b.epsilon_per_day, 0.5 * per_day) and math.isclose(b.delta_per_day, 1e-6 * per_day)
    pure = privacy_budget(DPParams(epsilon=0.5), window_s, declared_domain=True)
    assert pure.delta == 0 and "pure" in pure.statement() and f"all {per_day} windows" in pure.statement()


def test_privacy_budget_statement_per_window_and_day():
    text = privacy_budget(DPParams(epsilon=1.0), 3600, declared_domain=False).statement()
    assert "(epsilon=1, delta=1e-06) per window" in text and "(epsilon=24, delta=2.4e-05) per day" in text
    with pytest.raises(ValueError, match="window_s=0"):
        privacy_budget(DPParams(), 0, True)


# The declared area.

def test_area_from_a_geojson_polygon_covers_it(tmp_path):
    lat0, lon0, lat1, lon1 = 48.84, 2.30, 48.87, 2.36
    polygon = {"type": "Polygon", "coordinates": [[[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]]}
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": polygon}]}))
    area = ServiceArea.from_file(path, 8)
    assert all(h3.get_resolution(c) == 8 for c in area.cells)
    for lat in np.linspace(lat0, lat1, 9):  # every point of the polygon is in some area cell (overlap)
        for lon in np.linspace(lon0, lon1, 9):
            assert h3.latlng_to_cell(lat, lon, 8) in area.cells
    assert ServiceArea.from_geojson(polygon, 8) == area


def test_area_from_a_list_of_cells(tmp_path):
    path = tmp_path / "area.txt"
    path.write_text(f"# the centre\n{RES8[0]}\n\n{PARENT}  # and all of this one\n")
    area = ServiceArea.from_file(path, 8)
    assert area.cells == frozenset(RES8) and area.resolution == 8
    assert area.by_ancestor(7) == {PARENT: frozenset(RES8)}


@pytest.mark.parametrize("content, suffix, message", [
    ("", ".txt", "no cell"),
    ("not-a-cell\n", ".txt", "cell='not-a-cell' is not a valid H3 cell"),
    (f"{RES9[0]}\n", ".txt", "has resolution 9, finer than resolution=8"),
    ('{"type": "Point", "coordinates": [2.3, 48.8]}', ".geojson", "type='Point' is not Polygon"),
    ('{"type": "FeatureCollection", "features": []}', ".geojson", "no feature"),
    ("{", ".json", "service area file"),
])
def test_bad_areas_are_refused_with_the_reason(tmp_path, content, suffix, message):
    path = tmp_path / f"area{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        ServiceArea.from_file(path, 8)


def test_a_missing_area_file_and_too_large_an_area_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        ServiceArea.from_file(tmp_path / "nope.geojson", 8)
    with pytest.raises(ValueError, match=f"more than {MAX_CELLS}"):
        ServiceArea.from_cells([h3.cell_to_parent(PARENT, 3)], 10)  # 7**7 = 823,543 cells
