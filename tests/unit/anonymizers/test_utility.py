import h3
import pytest

from anonymizers.kanon import KAnonParams
from anonymizers.regions import RegionCount, publish_regions
from anonymizers.utility import MapUtility, measure_utility

CENTER = h3.latlng_to_cell(48.85, 2.35, 9)
PARENT8 = h3.cell_to_parent(CENTER, 8)
SIBLINGS = sorted(h3.cell_to_children(PARENT8, 9))
FAR = h3.latlng_to_cell(43.3, 5.4, 9)  # Marseille: another res-5 cell


def users(start, n):
    return frozenset(f"u{i}" for i in range(start, start + n))


def test_measures_of_a_window():
    a, b, c = SIBLINGS[:3]
    window = {a: users(0, 10), b: users(10, 3), c: users(20, 8), FAR: users(0, 4)}
    rows = publish_regions(window, KAnonParams(k=10))
    m = measure_utility(rows, window)
    area_a = h3.cell_area(a, unit="km^2")
    area_rest = sum(h3.cell_area(s, unit="km^2") for s in SIBLINGS[1:])
    assert m == MapUtility(regions=2, users=21, memberships=25, at_res8=21 / 25, at_res7=21 / 25,
                           suppressed=4 / 25, mean_km2=pytest.approx((10 * area_a + 11 * area_rest) / 21))
    assert m.room(10) == (2, 2)
    assert "2 regions (users/k = 2, memberships/k = 2)" in m.line(10) and "suppressed: 16%" in m.line(10)


def test_a_coarser_map_scores_lower():
    window = {s: users(10 * i, 10) for i, s in enumerate(SIBLINGS)}
    fine = measure_utility(publish_regions(window), window)
    coarse = measure_utility([RegionCount(PARENT8, PARENT8, 8, (PARENT8,), 70)], window)
    assert (fine.regions, fine.at_res8) == (7, 1.0) and (coarse.regions, coarse.at_res8) == (1, 1.0)
    assert fine.mean_km2 < coarse.mean_km2


def test_empty_window():
    assert measure_utility([], {}) == MapUtility(0, 0, 0, 0.0, 0.0, 0.0, 0.0)


def test_overlapping_regions_are_refused():
    a = SIBLINGS[0]
    rows = [RegionCount(a, a, 9, (a,), 10), RegionCount(PARENT8, PARENT8, 8, (PARENT8,), 10)]
    with pytest.raises(ValueError, match=f"base cell '{a}' is covered by 2 published regions"):
        measure_utility(rows, {a: users(0, 10)})
    with pytest.raises(ValueError, match="is in two published regions"):
        measure_utility([rows[0], rows[0]], {a: users(0, 10)})
