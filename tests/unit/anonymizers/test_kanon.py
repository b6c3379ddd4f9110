import h3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonymizers.kanon import OTHER, CellCount, GroupCount, KAnonParams, generalize_cells, publish_groups

CENTER = h3.latlng_to_cell(48.85, 2.35, 9)
SIBLINGS = sorted(h3.cell_to_children(h3.cell_to_parent(CENTER, 8), 9))
# Res-9 cells around Paris plus the neighbourhoods of the centres of the neighbouring
# res-6 cells, so that random inputs span several coarse ancestors.
POOL = sorted(
    set(h3.grid_disk(CENTER, 4))
    | {
        cell
        for neighbour in h3.grid_disk(h3.cell_to_parent(CENTER, 6), 1)
        for cell in h3.grid_disk(h3.cell_to_children(neighbour, 9)[0], 1)
    }
)
assert all(h3.get_resolution(c) == 9 for c in POOL)


def users(start, n):
    return frozenset(f"u{i}" for i in range(start, start + n))


# ---- table -------------------------------------------------------------------------------


def test_cell_at_k_published_at_base():
    assert generalize_cells({CENTER: users(0, 10)}) == [CellCount(CENTER, 9, 10)]


def test_below_k_everywhere_is_suppressed():
    assert generalize_cells({CENTER: users(0, 9)}) == []


def test_one_below_k_sibling_lifts_all_siblings_to_parent():
    a, b = SIBLINGS[0], SIBLINGS[1]
    rows = generalize_cells({a: users(0, 10), b: users(10, 3)}, KAnonParams(k=10))
    assert rows == [CellCount(h3.cell_to_parent(CENTER, 8), 8, 13)]


def test_siblings_all_at_k_are_split():
    a, b = SIBLINGS[0], SIBLINGS[1]
    rows = generalize_cells({a: users(0, 10), b: users(10, 12)}, KAnonParams(k=10))
    assert rows == sorted([CellCount(a, 9, 10), CellCount(b, 9, 12)], key=lambda r: r.cell)


def test_counts_are_distinct_users_not_sums():
    a, b = SIBLINGS[0], SIBLINGS[1]
    rows = generalize_cells({a: users(0, 6), b: users(0, 6)}, KAnonParams(k=5))
    assert rows == sorted([CellCount(a, 9, 6), CellCount(b, 9, 6)], key=lambda r: r.cell)
    rows = generalize_cells({a: users(0, 6), b: users(0, 4)}, KAnonParams(k=5))
    assert rows == [CellCount(h3.cell_to_parent(CENTER, 8), 8, 6)]


def test_generalizes_up_to_coarsest_then_suppresses():
    far = h3.latlng_to_cell(43.3, 5.4, 9)  # Marseille: another coarsest ancestor
    params = KAnonParams(k=5, base_resolution=9, coarsest_resolution=7)
    paris7 = h3.cell_to_parent(CENTER, 7)
    cousin = next(
        c for c in h3.cell_to_children(paris7, 9)
        if h3.cell_to_parent(c, 8) != h3.cell_to_parent(CENTER, 8)
    )
    rows = generalize_cells({CENTER: users(0, 4), far: users(0, 4), cousin: users(100, 1)}, params)
    assert rows == [CellCount(paris7, 7, 5)]


def test_empty_inputs():
    assert generalize_cells({}) == []
    assert generalize_cells({CENTER: set()}) == []


@pytest.mark.parametrize(
    "cells, message",
    [
        ({h3.cell_to_parent(CENTER, 8): {"a"}}, "has resolution 8, expected base_resolution=9"),
        ({CENTER: {"a"}, h3.cell_to_parent(CENTER, 8): {"b"}}, "has resolution 8"),
        ({"not-a-cell": {"a"}}, "cell='not-a-cell' is not a valid H3 cell"),
        ({"8928308280fffff0": {"a"}}, "is not a valid H3 cell"),
    ],
)
def test_generalize_cells_rejects(cells, message):
    with pytest.raises(ValueError, match=message):
        generalize_cells(cells)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=1), "k=1 must be >= 2"),
        (dict(k=2.5), "k=2.5"),
        (dict(base_resolution=16), "base_resolution=16"),
        (dict(base_resolution=-1, coarsest_resolution=-1), "base_resolution=-1"),
        (dict(base_resolution=7, coarsest_resolution=8), "coarsest_resolution=8"),
        (dict(coarsest_resolution=-1), "coarsest_resolution=-1"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KAnonParams(**kwargs)


@pytest.mark.parametrize(
    "groups, k, expected",
    [
        ({}, 3, []),
        ({("a",): {1, 2, 3}}, 3, [GroupCount(("a",), 3)]),
        ({("a",): {1, 2}}, 3, []),
        (
            {("a",): {1, 2, 3}, ("b",): {4, 5}, ("c",): {6}},
            3,
            [GroupCount(("a",), 3), GroupCount(("other",), 3)],
        ),
        ({("a",): {1, 2, 3}, ("b",): {4, 5}, ("c",): {4}}, 3, [GroupCount(("a",), 3)]),
        ({("a", "x"): {1, 2}, ("b", "y"): {3, 4}}, 3, [GroupCount(("other", "other"), 4)]),
        ({("other",): {1, 2, 3}, ("b",): {4}}, 3, [GroupCount(("other",), 4)]),
        ({("Chrome", "124"): set(range(5)), ("Chrome", "123"): set(range(5))}, 5,
         [GroupCount(("Chrome", "123"), 5), GroupCount(("Chrome", "124"), 5)]),
    ],
)
def test_publish_groups_table(groups, k, expected):
    assert publish_groups(groups, k) == expected


@pytest.mark.parametrize(
    "groups, k, message",
    [
        ({("a",): {1}}, 1, "k=1"),
        ({"a": {1}}, 3, "group='a' must be a non-empty tuple"),
        ({(): {1}}, 3, r"group=\(\)"),
        ({("a",): {1}, ("a", "b"): {2}}, 3, "has 2 values, expected 1"),
    ],
)
def test_publish_groups_rejects(groups, k, message):
    with pytest.raises(ValueError, match=message):
        publish_groups(groups, k)


# ---- properties -------------------------------------------------------------------------

cell_inputs = st.dictionaries(
    st.sampled_from(POOL), st.frozensets(st.integers(0, 60), max_size=14), max_size=40
)
params_st = st.builds(
    KAnonParams, k=st.integers(2, 8), base_resolution=st.just(9), coarsest_resolution=st.integers(5, 9)
)


def _under(base_cell, cell, res):
    return h3.cell_to_parent(base_cell, res) == cell


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cell_inputs, params_st)
def test_generalize_cells_properties(users_by_cell, params):
    rows = generalize_cells(users_by_cell, params)
    k, coarsest, base = params.k, params.coarsest_resolution, params.base_resolution
    nonempty = {c: u for c, u in users_by_cell.items() if u}
    published = {row.cell for row in rows}
    everyone = frozenset().union(*users_by_cell.values()) if users_by_cell else frozenset()

    assert len(published) == len(rows), "duplicate published cell"
    for row in rows:
        assert isinstance(row.users, int)
        assert row.users >= k
        assert coarsest <= row.resolution <= base == 9
        assert h3.get_resolution(row.cell) == row.resolution
        # The count is the exact distinct-user union of the input below it: nobody from outside.
        below = [u for c, u in nonempty.items() if _under(c, row.cell, row.resolution)]
        union = frozenset().union(*below)
        assert below and union <= everyone and row.users == len(union)
        # No published ancestor: no overlap, no parent together with a child.
        for res in range(coarsest, row.resolution):
            assert h3.cell_to_parent(row.cell, res) not in published
        # The rule: a published non-base cell has a non-empty child below k.
        if row.resolution < base:
            kids = {}
            for c, u in nonempty.items():
                if _under(c, row.cell, row.resolution):
                    kids.setdefault(h3.cell_to_parent(c, row.resolution + 1), set()).update(u)
            assert min(len(u) for u in kids.values()) < k

    # Every non-empty base cell is covered by exactly one published cell, or its whole
    # coarsest ancestor is suppressed (below k, nothing published under it).
    for cell in nonempty:
        covering = [h3.cell_to_parent(cell, r) for r in range(coarsest, base + 1)]
        hits = [c for c in covering if c in published]
        if hits:
            assert len(hits) == 1
        else:
            top = covering[0]
            assert not any(h3.cell_to_parent(p, coarsest) == top for p in published)
            same_top = [u for c, u in nonempty.items() if h3.cell_to_parent(c, coarsest) == top]
            assert len(frozenset().union(*same_top)) < k


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["Chrome", "Firefox", "Safari", "other"]), st.sampled_from(["a", "b", "c"])),
        st.frozensets(st.integers(0, 40), max_size=12),
        max_size=12,
    ),
    st.integers(2, 8),
)
def test_publish_groups_properties(users_by_group, k):
    rows = publish_groups(users_by_group, k)
    other_key = (OTHER, OTHER)
    assert all(row.users >= k and isinstance(row.users, int) for row in rows)
    keys = [row.group for row in rows]
    assert len(keys) == len(set(keys))
    small = [u for g, u in users_by_group.items() if len(u) < k or g == other_key]
    big = {g: len(u) for g, u in users_by_group.items() if len(u) >= k and g != other_key}
    other_union = frozenset().union(*small) if small else frozenset()
    assert {r.group: r.users for r in rows if r.group != other_key} == big
    other_rows = [r for r in rows if r.group == other_key]
    if len(other_union) >= k:
        assert other_rows == [GroupCount(other_key, len(other_union))]
    else:
        assert other_rows == []
