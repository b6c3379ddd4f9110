import math

import numpy as np
import pytest

from anonymizers.dp import DPParams, bound_contributions, noisy_count, publish_noisy_cells
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
