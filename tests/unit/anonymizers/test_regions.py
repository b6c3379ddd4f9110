import h3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonymizers.differencing import PublishedArea, find_isolations
from anonymizers.kanon import KAnonParams, generalize_cells
from anonymizers.regions import RegionCount, publish_regions

CENTER = h3.latlng_to_cell(48.85, 2.35, 9)
PARENT8 = h3.cell_to_parent(CENTER, 8)
SIBLINGS = sorted(h3.cell_to_children(PARENT8, 9))
COUSIN8 = sorted(c for c in h3.cell_to_children(h3.cell_to_parent(CENTER, 7), 8) if c != PARENT8)[0]
COUSINS = sorted(h3.cell_to_children(COUSIN8, 9))
# Res-9 cells around Paris plus the neighbourhoods of the centres of the neighbouring res-6 cells,
# so that random windows span several coarse ancestors.
POOL = sorted(
    set(h3.grid_disk(CENTER, 3))
    | {
        cell
        for neighbour in h3.grid_disk(h3.cell_to_parent(CENTER, 6), 1)
        for cell in h3.grid_disk(h3.cell_to_children(neighbour, 9)[0], 1)
    }
)


def users(start, n):
    return frozenset(f"u{i}" for i in range(start, start + n))


def base_cells(cells, base=9):
    """Every base cell under the given cells."""
    out = set()
    for c in cells:
        out |= {c} if h3.get_resolution(c) == base else set(h3.cell_to_children(c, base))
    return out


def region_of(rows, cell):
    """The published row covering a base cell, or None."""
    hits = [r for r in rows if cell in base_cells(r.members)]
    assert len(hits) <= 1
    return hits[0] if hits else None


# ---- table -------------------------------------------------------------------------------


def test_cell_at_k_published_alone():
    assert publish_regions({CENTER: users(0, 10)}) == [RegionCount(CENTER, CENTER, 9, (CENTER,), 10)]


def test_below_k_everywhere_is_suppressed():
    assert publish_regions({CENTER: users(0, 9)}) == []


def test_dense_child_published_and_remainder_of_parent_at_k():
    a, b, c = SIBLINGS[:3]
    rows = publish_regions({a: users(0, 10), b: users(10, 3), c: users(20, 8)}, KAnonParams(k=10))
    rest = tuple(sorted(set(SIBLINGS) - {a}))
    assert rows == [RegionCount(f"{PARENT8}-rest", PARENT8, 8, rest, 11), RegionCount(a, a, 9, (a,), 10)]


def test_remainder_below_k_goes_up_with_its_places():
    # b alone (3) under PARENT8 goes up; with the cousins' leftover (8) it makes the res-7 remainder.
    a, b = SIBLINGS[:2]
    rows = publish_regions({a: users(0, 10), b: users(10, 3), COUSINS[0]: users(20, 8)}, KAnonParams(k=10))
    parent7 = h3.cell_to_parent(CENTER, 7)
    rest7 = next(r for r in rows if r.cell == parent7)
    assert rest7.region == f"{parent7}-rest" and rest7.users == 11 and rest7.resolution == 7
    # Its places: all of the res-7 cell but the published cell a, in the fewest cells.
    assert base_cells(rest7.members) == base_cells([parent7]) - {a}
    assert PARENT8 not in rest7.members and COUSIN8 in rest7.members and b in rest7.members


def test_a_leftover_below_k_at_the_top_joins_the_nearest_published_region():
    a, b = SIBLINGS[:2]
    far = sorted(h3.cell_to_children(h3.cell_to_parent(CENTER, 6), 9))[0]  # same res-6 cell, another res-7
    assert h3.cell_to_parent(far, 7) != h3.cell_to_parent(CENTER, 7)
    window = {a: users(0, 6), b: users(6, 5), far: users(20, 4)}
    parent6 = h3.cell_to_parent(CENTER, 6)
    assert publish_regions(window, KAnonParams(k=10)) == [RegionCount(parent6, parent6, 6, (parent6,), 15)]
    # A lone base cell with >= k is never taken in: the leftover is suppressed instead.
    window = {a: users(0, 11), far: users(20, 4)}
    assert publish_regions(window, KAnonParams(k=10)) == [RegionCount(a, a, 9, (a,), 11)]


def test_a_remainder_with_room_for_two_is_published_as_two_groups():
    # Seven children of 4 users each (28): groups of >= 10 in H3 order: 3 + 4 children (12, 16).
    window = {c: users(4 * i, 4) for i, c in enumerate(SIBLINGS)}
    rows = publish_regions(window, KAnonParams(k=10))
    assert [(r.region, r.members, r.users) for r in rows] == [
        (f"{PARENT8}-rest-1", tuple(SIBLINGS[:3]), 12), (f"{PARENT8}-rest-2", tuple(SIBLINGS[3:]), 16)]
    # With a dense child published alone, the rest of the parent goes to the last group.
    window[SIBLINGS[0]] = users(100, 10)
    rows = publish_regions(window, KAnonParams(k=10))
    assert [(r.region, r.members, r.users) for r in rows] == [
        (f"{PARENT8}-rest-1", tuple(SIBLINGS[1:4]), 12), (f"{PARENT8}-rest-2", tuple(SIBLINGS[4:]), 12),
        (SIBLINGS[0], (SIBLINGS[0],), 10)]


def test_whole_cell_when_nothing_inside_is_published():
    a, b = SIBLINGS[:2]
    assert publish_regions({a: users(0, 6), b: users(6, 6)}) == [RegionCount(PARENT8, PARENT8, 8, (PARENT8,), 12)]


def test_counts_are_distinct_users_not_sums():
    a, b, c = SIBLINGS[:3]
    rows = publish_regions({a: users(0, 10), b: users(0, 6), c: users(2, 6)}, KAnonParams(k=10))
    assert [r.users for r in rows] == [10]  # b and c together are 8 people, not 12: below k, suppressed
    assert rows[0].region == a


def test_one_sparse_child_no_longer_holds_dense_siblings_back():
    dense = {c: users(10 * i, 10) for i, c in enumerate(SIBLINGS[:6])}
    sparse = {SIBLINGS[6]: users(100, 3)}
    old = generalize_cells(dense | sparse)
    assert [r.resolution for r in old] == [8]  # the cell rule: one hexagon for all 63 users
    rows = publish_regions(dense | sparse)
    assert sorted(r.region for r in rows) == sorted(SIBLINGS[:6])  # the 3 go up and are suppressed here:
    # nothing but lone base cells to join at the top


@pytest.mark.parametrize(
    "cells, message",
    [
        ({PARENT8: {"a"}}, "has resolution 8, expected base_resolution=9"),
        ({"not-a-cell": {"a"}}, "cell='not-a-cell' is not a valid H3 cell"),
    ],
)
def test_publish_regions_rejects(cells, message):
    with pytest.raises(ValueError, match=message):
        publish_regions(cells)


# ---- the differencing attacker on known rules --------------------------------------------


def every_cell_at_k(users_by_cell, params):
    """A naive rule: publish every cell (any resolution) with >= k users: parents next to children."""
    rows = []
    for res in range(params.coarsest_resolution, params.base_resolution + 1):
        by: dict[str, set] = {}
        for c, u in users_by_cell.items():
            by.setdefault(h3.cell_to_parent(c, res), set()).update(u)
        rows += [PublishedArea(c, (c,), len(u)) for c, u in by.items() if len(u) >= params.k]
    return rows


def as_published(rows):
    return [PublishedArea(r.region, r.members, r.users) for r in rows]


def test_attacker_isolates_the_lone_user_next_to_a_published_child():
    a, b = SIBLINGS[:2]
    window = {a: users(0, 10), b: users(10, 1)}
    params = KAnonParams(k=10, coarsest_resolution=8)
    found = find_isolations(every_cell_at_k(window, params), window, 10)
    assert [(f.plus, f.minus, f.users) for f in found] == [((PARENT8,), (a,), 1)]
    assert find_isolations(as_published(publish_regions(window, params)), window, 10) == []


def test_attacker_tries_differences_of_nested_regions():
    # A parent p (12) published next to its children a and b (6 each): p - a counts b's 6 users,
    # a + b - p leaves no place. At k = 5 nothing is isolated; at k = 7 the children and both
    # differences are.
    a, b = SIBLINGS[:2]
    window = {a: users(0, 6), b: users(6, 6)}
    rows = [PublishedArea("p", (a, b), 12), PublishedArea("a", (a,), 6), PublishedArea("b", (b,), 6)]
    assert find_isolations(rows, window, 5) == []
    found = find_isolations(rows, window, 7)
    assert sorted((f.plus, f.minus, f.users) for f in found) == [
        (("a",), (), 6), (("b",), (), 6), (("p",), ("a",), 6), (("p",), ("b",), 6)]


def test_attacker_flags_a_count_below_k():
    window = {CENTER: users(0, 3)}
    assert [f.users for f in find_isolations([PublishedArea(CENTER, (CENTER,), 3)], window, 5)] == [3]


def test_attacker_rejects_bad_input():
    with pytest.raises(ValueError, match="k=1"):
        find_isolations([], {}, 1)
    with pytest.raises(ValueError, match="finer than the base resolution 8"):
        find_isolations([PublishedArea("x", (CENTER,), 5)], {PARENT8: users(0, 5)}, 5)


# ---- properties -------------------------------------------------------------------------

# Half the cells from two neighbouring res-8 cells, so that dense cells often sit next to sparse ones.
windows = st.dictionaries(st.one_of(st.sampled_from(SIBLINGS + COUSINS), st.sampled_from(POOL)),
                          st.frozensets(st.integers(0, 30), min_size=1, max_size=10), min_size=2, max_size=30)
params_st = st.builds(KAnonParams, k=st.integers(2, 5), base_resolution=st.just(9),
                      coarsest_resolution=st.integers(5, 9))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows, params_st)
def test_publish_regions_properties(window, params):
    rows = publish_regions(window, params)
    k, coarsest, base = params.k, params.coarsest_resolution, params.base_resolution
    seen, merged = {}, set()
    for row in rows:
        places = base_cells(row.members)
        assert coarsest <= row.resolution <= base and h3.get_resolution(row.cell) == row.resolution
        assert places <= base_cells([row.cell])
        assert (row.region == row.cell) == (row.members == (row.cell,))
        for c in places:
            assert c not in seen, f"{c} in {seen.get(c)} and {row.region}"
            seen[c] = row.region
        # The count is the exact union of the users in its places: >= k, nobody from outside.
        inside = [u for c, u in window.items() if c in places]
        assert row.users == len(frozenset().union(*inside)) >= k
        # Finest under the rule: no child of its cell holds k users of the region on its own, but
        # in the one region per coarsest cell that took in a leftover.
        if row.resolution < base:
            for child in h3.cell_to_children(row.cell, row.resolution + 1):
                part = [u for c, u in window.items()
                        if c in places and h3.cell_to_parent(c, row.resolution + 1) == child]
                if len(frozenset().union(*part)) >= k:
                    top = h3.cell_to_parent(row.cell, coarsest)
                    assert top not in merged, f"two regions took in a leftover in {top}"
                    merged.add(top)
    # Once a region is published at a cell, all of that cell is covered by published regions.
    for row in rows:
        assert all(c in seen for c in base_cells([row.cell]))
    # What is not covered is suppressed: below k per coarsest cell, where only lone base cells (or
    # nothing) are published. A base cell with >= k is alone.
    left: dict[str, set] = {}
    for c, u in window.items():
        if u and c not in seen:
            left.setdefault(h3.cell_to_parent(c, coarsest), set()).update(u)
        if len(u) >= k:
            assert seen[c] == c
    for top, u in left.items():
        assert len(u) < k
        assert all(r.resolution == base for r in rows if h3.cell_to_parent(r.cell, coarsest) == top)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows, params_st)
def test_no_difference_of_published_regions_isolates_fewer_than_k(window, params):
    rows = publish_regions(window, params)
    assert find_isolations(as_published(rows), window, params.k) == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows, params_st, st.data(), st.frozensets(st.integers(0, 60), min_size=1, max_size=12))
def test_more_users_in_a_place_never_give_it_a_coarser_region(window, params, data, extra):
    # A place with users (an empty one is not on the map, though some region covers its ground).
    cell = data.draw(st.sampled_from(sorted(window)))
    before = region_of(publish_regions(window, params), cell)
    grown = dict(window)
    grown[cell] = frozenset(window.get(cell, frozenset())) | extra
    after = region_of(publish_regions(grown, params), cell)
    if before is not None:
        assert after is not None, "suppressed after more users came"
        assert after.resolution >= before.resolution


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows, params_st, st.sampled_from(POOL))
def test_a_place_with_k_users_stays_alone_whatever_comes_around_it(window, params, cell):
    # The cell rule broke this: 3 users in a sparse sibling lifted 6 dense ones a level up.
    window = dict(window)
    window[cell] = frozenset(f"dense{i}" for i in range(params.k))
    rows = publish_regions(window, params)
    assert region_of(rows, cell).region == cell
