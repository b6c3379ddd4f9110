"""The crossing rules every detector shares (geo.crossings.model), as tables of cases."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from geo.crossings import CellDetector, CrossingParams, Fix, detect_crossings, route, route_many
from geo.crossings.model import cooldown_period, is_usable, supersedes

P = CrossingParams(max_accuracy_m=100.0, cooldown_s=3600.0)


@pytest.mark.parametrize("accuracy, usable", [
    (None, True),  # unknown accuracy is usable
    (math.nan, True),
    (0.0, True),
    (100.0, True),  # the bound itself is usable
    (100.000001, False),
    (math.inf, False),
])
def test_accuracy_rule(accuracy, usable):
    assert bool(is_usable(accuracy, P)) is usable
    assert is_usable(np.asarray([accuracy, accuracy], dtype=np.float64), P).tolist() == [usable, usable]


def test_accuracy_rule_on_a_list_with_missing_values():
    assert is_usable([None, 5.0, 150.0], P).tolist() == [True, True, False]


def test_every_detector_applies_the_accuracy_rule():
    """route, route_many, CellDetector and detect_crossings drop exactly the pings is_usable refuses."""
    accuracies = [None, 100.0, 100.5]
    lat, lon = [48.85] * 3, [2.35] * 3
    assert [bool(route(Fix("a", 0.0, 48.85, 2.35, a), P)) for a in accuracies] == [True, True, False]
    assert sorted(set(route_many(lat, lon, accuracies, P).fix.tolist())) == [0, 1]
    key = route(Fix("a", 0.0, 48.85, 2.35), P)[0][0]
    det = CellDetector(P)
    det.add_many(["a", "b", "c"], [0.0, 1.0, 2.0], lat, lon, accuracies, [key] * 3, [key] * 3)
    assert det.live_pings == 2
    frame = pd.DataFrame({"user_id": ["a", "b", "c"], "ts": [0.0, 1.0, 2.0], "lat": lat, "lon": lon,
                          "accuracy_m": accuracies})
    assert set(zip(*detect_crossings(frame, P)[["user_a", "user_b"]].to_numpy().T)) == {("a", "b")}


@pytest.mark.parametrize("ts, period", [(0.0, 0), (3599.999, 0), (3600.0, 1), (-0.5, -1), (7200.5, 2)])
def test_cooldown_periods_are_aligned_on_the_epoch(ts, period):
    assert cooldown_period(ts, P.cooldown_s) == period
    assert cooldown_period(np.asarray([ts]), P.cooldown_s).tolist() == [period]
    assert cooldown_period(ts, 0.0) == ts  # no cooldown: every time its own period


@pytest.mark.parametrize("new, current, wins", [
    ((10.0, 5.0, "p", "<50m"), None, True),  # a pair's first crossing
    ((3600.0, 5.0, "p", "<50m"), (10.0, 5.0, "p", "<50m"), True),  # a later period
    ((10.0, 5.0, "p", "<50m"), (3600.0, 5.0, "p", "<50m"), False),  # an older period never
    ((5.0, 99.0, "z", "<50m"), (10.0, 1.0, "a", "<50m"), True),  # the same period: earlier wins
    ((20.0, 1.0, "a", "<50m"), (10.0, 99.0, "z", "<50m"), False),
    ((10.0, 4.0, "z", "<50m"), (10.0, 5.0, "a", "<50m"), True),  # a tie on time: the nearer
    ((10.0, 6.0, "a", "<50m"), (10.0, 5.0, "z", "<50m"), False),
    ((10.0, 5.0, "a", "<50m"), (10.0, 5.0, "b", "<50m"), True),  # then the smaller place
    ((10.0, 5.0, "b", "<50m"), (10.0, 5.0, "a", "<50m"), False),
    ((10.0, 5.0, "a", "50-100m"), (10.0, 5.0, "a", "<50m"), True),  # then the smaller band string
    ((10.0, 5.0, "a", "<50m"), (10.0, 5.0, "a", "<50m"), False),  # the same crossing again: no new record
    ((10.0, 5.0, None, None), (10.0, 5.0, "a", "<50m"), True),  # place unknown (pre-filter): ties go through
    ((10.0, 6.0, None, None), (10.0, 5.0, "a", "<50m"), False),  # but not what is known to be later
])
def test_supersedes_states_the_order(new, current, wins):
    assert supersedes(*new, current, P.cooldown_s) is wins


def test_supersedes_is_order_independent():
    """Offered in any order, the same crossings leave the same current record: the first in the order."""
    import itertools
    import random

    rng = random.Random(7)
    for _ in range(200):
        crossings = [(float(rng.choice([0, 5, 10, 3590, 3600, 3605, 7300])), float(rng.choice([1, 2])),
                      rng.choice("ab"), rng.choice(["<50m", "50-100m"])) for _ in range(rng.randint(1, 5))]
        finals = set()
        for order in itertools.permutations(crossings):
            current = None
            for c in order:
                if supersedes(*c, current, P.cooldown_s):
                    current = c
            finals.add(current)
        assert len(finals) == 1
