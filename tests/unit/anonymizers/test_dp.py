import h3
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymizers.dp import (DPParams, admit_cell, bound_contributions, bound_in_order, noisy_count,
                            publication_threshold, publish_noisy_cells)
from anonymizers.kanon import CellCount

CELLS = ["891fb466257ffff", "891fb466253ffff", "891fb46625bffff", "891fb466243ffff"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epsilon=0), "epsilon=0"),
        (dict(epsilon=-1), "epsilon=-1"),
        (dict(epsilon=float("inf")), "epsilon=inf"),
        (dict(max_cells_per_user=0), "max_cells_per_user=0"),
        (dict(max_cells_per_user=1.5), "max_cells_per_user=1.5"),
        (dict(delta=0), r"delta=0 must be in \(0, 1e-06\]"),
        (dict(delta=1e-5), "delta=1e-05"),
        (dict(delta=0.24), "delta=0.24"),
        (dict(resolution=16), "resolution=16"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPParams(**kwargs)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_bound_contributions(m):
    users_by_cell = {c: {f"u{j}" for j in range(i, i + 20)} for i, c in enumerate(CELLS)}
    bounded = bound_contributions(users_by_cell, m, np.random.default_rng(7))
    per_user: dict = {}
    for cell, users in bounded.items():
        assert users <= users_by_cell[cell]
        for u in users:
            per_user[u] = per_user.get(u, 0) + 1
    everyone = set().union(*users_by_cell.values())
    assert set(per_user) == everyone  # each user kept somewhere
    for u, n in per_user.items():
        assert n == min(m, sum(u in s for s in users_by_cell.values()))
    again = bound_contributions(users_by_cell, m, np.random.default_rng(7))
    assert again == bounded


def test_noisy_count_distribution():
    rng = np.random.default_rng(1)
    eps, sens = 1.0, 2
    noise = np.array([noisy_count(100, eps, sens, rng) - 100 for _ in range(20_000)])
    a = math.exp(-eps / sens)
    assert abs(noise.mean()) < 0.1
    assert abs(noise.var() - 2 * a / (1 - a) ** 2) / (2 * a / (1 - a) ** 2) < 0.1
    assert abs((noise == 0).mean() - (1 - a) / (1 + a)) < 0.02
    assert noise.dtype.kind == "i"


@pytest.mark.parametrize(
    "args, message",
    [((-1, 1.0, 1), "count=-1"), ((1, 0.0, 1), "epsilon=0.0"), ((1, 1.0, 0), "max_cells_per_user=0")],
)
def test_noisy_count_errors(args, message):
    with pytest.raises(ValueError, match=message):
        noisy_count(*args, np.random.default_rng(0))


def test_publish_noisy_cells_thresholds_after_noise():
    users_by_cell = {CELLS[0]: {f"a{i}" for i in range(200)}, CELLS[1]: {"b1"}}
    rows = publish_noisy_cells(users_by_cell, DPParams(epsilon=2.0), k=10, rng=np.random.default_rng(3))
    assert [r.cell for r in rows] == [CELLS[0]]
    assert isinstance(rows[0], CellCount) and rows[0].users >= 10 and abs(rows[0].users - 200) < 30
    with_domain = publish_noisy_cells(users_by_cell, DPParams(), 10, np.random.default_rng(3), domain=CELLS)
    assert all(r.users >= 10 for r in with_domain)



@pytest.mark.parametrize("epsilon, m, delta, tau", [
    (1.0, 4, 1e-6, 60), (1.0, 1, 1e-6, 15), (2.0, 4, 1e-6, 31), (1.0, 4, 1e-9, 88), (40.0, 1, 1e-6, 2)])
def test_publication_threshold_table(epsilon, m, delta, tau):
    assert publication_threshold(DPParams(epsilon, m, delta)) == tau


@pytest.mark.parametrize("epsilon, m, delta", [(e, m, d) for e in (0.1, 0.5, 1.0, 3.0, 10.0) for m in (1, 2, 4, 8)
                                               for d in (1e-6, 1e-8, 1e-12)])
def test_publication_threshold_is_the_smallest_that_bounds_delta(epsilon, m, delta):
    tau = publication_threshold(DPParams(epsilon, m, delta))
    a = math.exp(-epsilon / m)
    risk = lambda t: m * a ** (t - 1) / (1 + a)  # noqa: E731  P(some lone-user cell is published)
    assert risk(tau) <= delta and (tau == 1 or risk(tau - 1) > delta)


def test_a_lone_user_is_published_no_more_often_than_delta_allows():
    # epsilon = 1, m = 1: threshold 15, P(a lone user's cell is published) = a**14 / (1 + a) = 6e-7.
    # With k = 10 alone (what a declared domain applies) it is a**9 / (1 + a) = 9e-5: ~9 in 100,000.
    params = DPParams(epsilon=1.0, max_cells_per_user=1)
    lone = {CELLS[0]: {"alone"}}
    rng = np.random.default_rng(11)
    assert sum(bool(publish_noisy_cells(lone, params, 10, rng)) for _ in range(100_000)) == 0
    rng = np.random.default_rng(11)
    assert sum(bool(publish_noisy_cells(lone, params, 10, rng, domain=CELLS[:1])) for _ in range(100_000)) > 0


def test_default_threshold_is_applied_to_data_cells_not_to_a_declared_domain():
    users_by_cell = {CELLS[0]: {f"a{i}" for i in range(30)}}
    params = DPParams(epsilon=50.0, max_cells_per_user=1)  # noise ~0: the count is the true 30
    assert publication_threshold(DPParams(epsilon=1.0, max_cells_per_user=1)) == 15
    strict = DPParams(epsilon=1.0, max_cells_per_user=4)  # threshold 60 > 30
    assert [r.users for r in publish_noisy_cells(users_by_cell, params, 10, np.random.default_rng(0))] == [30]
    hits = [bool(publish_noisy_cells(users_by_cell, strict, 10, np.random.default_rng(s))) for s in range(200)]
    assert not any(hits)
    declared = [bool(publish_noisy_cells(users_by_cell, strict, 10, np.random.default_rng(s), domain=CELLS))
                for s in range(200)]
    assert sum(declared) > 150  # over a declared domain only k applies: 30 +- noise >= 10 mostly


def test_noisy_cells_at_a_fixed_coarser_resolution():
    parent = h3.cell_to_parent(CELLS[0], 7)
    users_by_cell = {c: {f"u{i}"} | {"shared"} for i, c in enumerate(h3.cell_to_children(parent, 9)[:20])}
    params = DPParams(epsilon=50.0, max_cells_per_user=1, resolution=7)  # noise ~0
    rows = publish_noisy_cells(users_by_cell, params, 10, np.random.default_rng(0))
    assert rows == [CellCount(parent, 7, 21)]  # 20 + "shared", counted once
    with pytest.raises(ValueError, match="coarser than resolution=8"):
        publish_noisy_cells({parent: {"a"}}, DPParams(resolution=8), 10, np.random.default_rng(0))


def test_keyed_randomness_makes_a_window_publish_the_same_noise_in_any_input_order():
    """The worker draws noise from a keyed hash of (window, cell) and bounds from (window, user): a
    replay, a restart or another arrival order of the same window publishes the same noisy counts."""
    from anonymizers.dp import KeyedRandomness

    rng = np.random.default_rng(5)
    users_by_cell = {cell: {f"u{j}" for j in rng.choice(400, size=rng.integers(5, 60), replace=False)}
                     for cell in CELLS}
    params = DPParams(epsilon=1.0)
    first = publish_noisy_cells(users_by_cell, params, 10, KeyedRandomness(b"s" * 32, "2026-12-02T10:00:00.000Z"))
    shuffled = dict(reversed(list({c: set(reversed(sorted(u))) for c, u in users_by_cell.items()}.items())))
    assert publish_noisy_cells(shuffled, params, 10, KeyedRandomness(b"s" * 32, "2026-12-02T10:00:00.000Z")) == first
    other = [publish_noisy_cells(users_by_cell, params, 10, KeyedRandomness(b"s" * 32, f"w{i}")) for i in range(5)]
    assert any(o != first for o in other)  # another window (or secret) draws other noise
    keyed = KeyedRandomness(b"k" * 32, "w")
    noise = np.array([noisy_count(100, 1.0, 1, keyed.generator("noise", i)) - 100 for i in range(20_000)])
    assert abs(noise.mean()) < 0.05 and noise.var() == pytest.approx(2 * np.exp(-1) / (1 - np.exp(-1)) ** 2, rel=0.1)


# --------------------------------------------------------------------------- the bound in each user's order

_VISITS = st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from(CELLS)), max_size=60)


def _interleave(visits, order):
    """The same per-user sequences, users interleaved differently (order: which user's next visit comes)."""
    queues: dict = {}
    for user, cell in visits:
        queues.setdefault(user, []).append(cell)
    out, users = [], sorted(queues)
    for pick in order:
        live = [u for u in users if queues[u]]
        if not live:
            break
        u = live[pick % len(live)]
        out.append((u, queues[u].pop(0)))
    return out + [(u, c) for u in users for c in queues[u]]


@settings(max_examples=200, deadline=None)
@given(_VISITS, st.integers(1, 4), st.lists(st.integers(0, 5), max_size=80))
def test_bound_in_order_keeps_each_users_first_m_cells_whatever_the_interleaving(visits, m, order):
    expected: dict = {}
    for user, cell in visits:  # by hand: the first m distinct cells in the user's own order
        cells = expected.setdefault(user, [])
        if cell not in cells and len(cells) < m:
            cells.append(cell)
    by_cell = bound_in_order(visits, m)
    assert {(u, c) for c, us in by_cell.items() for u in us} == {(u, c) for u, cs in expected.items() for c in cs}
    assert bound_in_order(_interleave(visits, order), m) == by_cell


@settings(max_examples=200, deadline=None)
@given(_VISITS, st.integers(1, 4), st.sampled_from("abcdef"))
def test_removing_one_user_changes_at_most_m_counts_by_one(visits, m, user):
    """The sensitivity the noise is scaled to: one user's pings move at most m counts, each by 1."""
    full = bound_in_order(visits, m)
    without = bound_in_order([v for v in visits if v[0] != user], m)
    changed = [c for c in set(full) | set(without) if len(full.get(c, ())) != len(without.get(c, ()))]
    assert len(changed) <= m
    assert all(len(full.get(c, ())) - len(without.get(c, ())) == 1 for c in changed)


def test_admit_cell_says_which_pings_count():
    assert admit_cell((), "a", 2) == ("a",)
    kept = ("a", "b")
    assert admit_cell(kept, "a", 2) is kept  # already counted there: nothing to write
    assert admit_cell(kept, "c", 2) is None  # a third cell does not count
    with pytest.raises(ValueError, match="m=0"):
        admit_cell((), "a", 0)
