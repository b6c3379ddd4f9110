"""The crossing rules every detector shares (geo.crossings.model), as tables of cases."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from geo.crossings import CellDetector, CrossingParams, Fix, detect_crossings, route, route_many
from geo.crossings.model import cooldown_over, is_usable

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


@pytest.mark.parametrize("ts, last, over", [
    (0.0, -math.inf, True),  # a pair's first crossing is reported
    (3599.0, 0.0, False),
    (3600.0, 0.0, True),  # at the end of the cooldown exactly: reported
    (3600.5, 0.0, True),
    (1e9, math.inf, False),  # +inf: never
])
def test_cooldown_rule(ts, last, over):
    assert bool(cooldown_over(ts, last, P.cooldown_s)) is over
    assert cooldown_over(np.asarray([ts]), np.asarray([last]), P.cooldown_s).tolist() == [over]
