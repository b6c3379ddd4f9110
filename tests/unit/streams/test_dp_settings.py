"""CROSSPATHS_DP_DOMAIN: validated at start, split by statistics partition, stated; empty windows closed."""
from __future__ import annotations

import os
from pathlib import Path

import h3
import pytest

from anonymizers.dp import publication_threshold
from streams.plumbing.windowstate import SEP, TableBackedWindows
from streams.rules import Rules, partner_statistics_statement, stats_partition
from streams.settings import Settings

AREA = str(Path(__file__).resolve().parents[3] / "geo" / "data" / "service-area-paris.geojson")


@pytest.fixture
def make(tmp_path):
    secret = tmp_path / "key"
    secret.write_bytes(os.urandom(32))
    return lambda **kw: Rules.from_settings(Settings(pseudonym_secret_file=secret, home=tmp_path, **kw))


def test_the_shipped_area_is_split_among_the_partitions_that_hold_its_cells(make):
    r = make(dp_epsilon=1.0, dp_domain=AREA, partitions=4)  # at the default resolution over an area: 8
    assert r.dp_area is not None and len(r.dp_area.cells) == 201 and r.dp_area.resolution == r.dp.resolution == 8
    assert set().union(*r.dp_cells.values()) == r.dp_area.cells
    assert sum(map(len, r.dp_cells.values())) == len(r.dp_area.cells)  # each cell in one partition
    for p, cells in r.dp_cells.items():
        assert all(stats_partition(c, Settings(partitions=4)) == p for c in cells)
    # One bound over all partitions (the ingest stage's): the sensitivity is m, whatever the partitions.
    assert r.dp.shards == 1 and r.dp.sensitivity == r.dp.max_cells_per_user == 4
    assert r.dp_budget.delta == 0 and r.dp_budget.windows_per_day == 24
    text = partner_statistics_statement(r)
    assert "every cell of the declared area (201 cells" in text and "epsilon=24 (pure) per day" in text


def test_without_an_area_the_threshold_follows_the_one_bound(make):
    r = make(partitions=4)  # the defaults: epsilon 1 per window, m = 4, resolution 7 without an area
    assert r.dp_area is None and r.dp_cells == {} and r.dp.shards == 1 and r.dp.sensitivity == 4
    assert r.dp.epsilon == 1 and r.dp.resolution == 7
    assert "each user counted in at most 4 cell(s) per window" in partner_statistics_statement(r)
    text = partner_statistics_statement(r)
    assert f"noisy count of {publication_threshold(r.dp)}" in text
    assert "(epsilon=1, delta=1e-06) per window; (epsilon=24, delta=2.4e-05) per day" in text
    assert "no differential privacy" in partner_statistics_statement(make(dp_epsilon=0))


@pytest.mark.parametrize("kw, message", [
    (dict(dp_epsilon=0, dp_domain=AREA), "dp_domain=.* is set but dp_epsilon is 0"),
    (dict(dp_epsilon=1.0, dp_resolution=4), r"dp_resolution=4 must be in \[h3_coarsest_resolution=5"),
    (dict(dp_epsilon=1.0, dp_resolution=10), r"dp_resolution=10 must be in .*h3_base_resolution=9\]"),
    (dict(dp_epsilon=1.0, dp_domain="/nonexistent/area.geojson"), "cannot be read"),
])
def test_bad_dp_settings_stop_the_start(make, kw, message):
    with pytest.raises(ValueError, match=message):
        make(**kw)


def test_stats_partition_is_the_outbox_placement():
    from streams.app import P
    from streams.plumbing.outbox import key_partition

    for lat, lon in [(48.85, 2.35), (48.81, 2.26), (48.89, 2.41), (40.7, -74.0)]:
        cell = h3.latlng_to_cell(lat, lon, 9)
        assert stats_partition(cell, Settings(partitions=P)) == key_partition(h3.cell_to_parent(cell, 5))


def _windows(every_window: bool):
    members, published = {}, {}
    return TableBackedWindows("t", members, published, 3600, 300, sources=range(1), every_window=every_window,
                              max_empty=3), published


def test_every_window_closes_the_empty_windows_too():
    w, published = _windows(every_window=True)
    w.add(0, 3600 * 10 + 5, "cell", "m1", source=0)
    w.advance(0, 0, 3600 * 11 + 300)  # window 10:00 complete
    assert [(c.start, c.members) for c in w.close(0)] == [(36000.0, {"cell": {"m1"}})]
    w.advance(0, 0, 3600 * 14 + 300)  # 11:00, 12:00, 13:00 complete, no one in them
    assert [(c.start / 3600, c.members) for c in w.close(0)] == [(11, {}), (12, {}), (13, {})]
    assert w.close(0) == [] and published[f"0{SEP}last"] == 13 * 3600
    w.advance(0, 0, 3600 * 24 + 300)  # after a long gap, only the latest max_empty
    assert [c.start / 3600 for c in w.close(0)] == [21, 22, 23]


def test_without_every_window_empty_windows_stay_silent():
    w, published = _windows(every_window=False)
    w.add(0, 3600 * 10 + 5, "cell", "m1", source=0)
    w.advance(0, 0, 3600 * 14 + 300)
    assert [c.start / 3600 for c in w.close(0)] == [10]
    assert f"0{SEP}last" not in published


def test_day_map_draws_noisy_cells_and_says_so(tmp_path):
    import pandas as pd

    from streams.tools.maps import _kind, _scale_label, render_day

    cells = sorted(h3.cell_to_children(h3.latlng_to_cell(48.8566, 2.3522, 6), 8))[:6]
    frame = pd.DataFrame([{"window_start": pd.Timestamp("2026-12-01T00:00Z") + pd.Timedelta(hours=h), "region": c,
                           "cell": c, "resolution": 8, "members": [c], "users": 10 + i, "k": 10, "noisy": True}
                          for h in range(3) for i, c in enumerate(cells)])
    assert _kind(frame) == "noisy cells" and "noisy" in _scale_label(frame)
    assert _kind(frame.drop(columns="noisy")) == "regions"
    data = render_day(frame, tmp_path / "day.png", "a DP day").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_window_rebuilt_from_its_table_equals_the_live_one_when_keys_hold_the_separator():
    """Connection groups join their attributes with SEP: a worker that takes a statistics partition over
    (restart, rebalance) must rebuild each group whole, not split at the group's own separators."""
    live, _ = _windows(every_window=False)
    group = SEP.join(["iOS", "Mobile Safari", "fr"])
    live.add(0, 3600 * 10 + 5, group, "m1", source=0)
    live.add(0, 3600 * 10 + 9, group, "m2", source=0)
    rebuilt = TableBackedWindows("t", live.members, live.published, 3600, 300, sources=range(1))
    for w in (live, rebuilt):
        w.advance(0, 0, 3600 * 11 + 300)
    assert [(c.start, c.members) for c in rebuilt.close(0)] == [(36000.0, {group: {"m1", "m2"}})]
