"""The command line, offline parts (no broker needed)."""
from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from geo.crossings import CrossingParams
from geo.oracle import brute_force_pairs
from schemas.timefmt import parse_ts
from streams.cli import main


def test_crossings_detect_on_a_csv_matches_the_oracle(tmp_path):
    pings = pd.DataFrame({
        "user_id": ["a", "b", "c", "a", "d"],
        "ts": ["2026-11-30T10:00:00Z", "2026-11-30T10:04:00Z", "2026-11-30T10:30:00Z",
               "2026-11-30T11:00:00Z", "2026-11-30T11:00:30Z"],
        "lat": [48.8566, 48.8570, 48.8566, 48.8600, 48.8601],
        "lon": [2.3522, 2.3525, 2.3522, 2.3400, 2.3401],
        "accuracy_m": [5, 5, 5, 5, 5],
    })
    src, out = tmp_path / "pings.csv", tmp_path / "crossings.csv"
    pings.to_csv(src, index=False)
    result = CliRunner().invoke(main, ["crossings", "detect", "--input", str(src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out)
    assert list(got.columns) == ["user_a", "user_b", "ts", "place", "distance_band"]
    assert set(zip(got.user_a, got.user_b)) == {("a", "b"), ("a", "d")}
    frame = pings.assign(ts=[parse_ts(t) for t in pings.ts])
    assert set(zip(got.user_a, got.user_b)) == brute_force_pairs(frame, CrossingParams())


def test_schemas_check_passes_on_the_committed_files():
    result = CliRunner().invoke(main, ["schemas", "export", "--check"])
    assert result.exit_code == 0, result.output


def test_topics_list_shows_retention_and_policy():
    result = CliRunner().invoke(main, ["topics", "list"])
    assert result.exit_code == 0
    assert "consents" in result.output and "compact" in result.output and "geo-pings" in result.output


def test_map_renders_a_png_of_published_cells(tmp_path):
    import h3

    from streams.tools.maps import render_cells

    cells = [h3.latlng_to_cell(48.8566, 2.3522, 7)] + list(h3.cell_to_children(h3.latlng_to_cell(48.9, 2.3, 6), 7))[:3]
    frame = pd.DataFrame({"cell": cells, "users": [12, 40, 15, 99], "resolution": [7] * 4, "k": [10] * 4})
    out = render_cells(frame, tmp_path / "map.png", "test window")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_map_draws_regions_with_their_member_cells(tmp_path):
    import h3

    from anonymizers.regions import publish_regions
    from streams.tools.maps import render_cells

    parent = h3.latlng_to_cell(48.8566, 2.3522, 8)
    kids = sorted(h3.cell_to_children(parent, 9))
    window = {kids[0]: {f"a{i}" for i in range(10)}, kids[1]: {f"b{i}" for i in range(6)},
              kids[2]: {f"c{i}" for i in range(6)}}
    rows = publish_regions(window)
    assert any(len(r.members) > 1 for r in rows)
    frame = pd.DataFrame([{"region": r.region, "cell": r.cell, "resolution": r.resolution, "members": list(r.members),
                           "users": r.users, "k": 10} for r in rows])
    data = render_cells(frame, tmp_path / "map.png", "regions").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_statistics_frame_reads_old_cell_rows_as_single_cell_regions():
    from streams.tools.report import statistics_frame

    window = {"window_start": "2026-11-30T10:00:00Z", "window_end": "2026-11-30T11:00:00Z", "k": 10}
    old = dict(window, cell="881fb46625fffff", resolution=8, users=12)
    new = dict(window, region="881fb466243ffff-rest", cell="881fb466243ffff", resolution=8,
               members=["891fb466247ffff", "891fb46624bffff"], users=30)
    frame = statistics_frame([old, new])
    assert list(frame["region"]) == ["881fb466243ffff-rest", "881fb46625fffff"]
    assert list(frame["members"]) == [["891fb466247ffff", "891fb46624bffff"], ["881fb46625fffff"]]
    assert statistics_frame([old])["members"].tolist() == [["881fb46625fffff"]]


def test_day_map_draws_each_window_as_a_small_multiple(tmp_path):
    import h3

    from anonymizers.regions import publish_regions
    from streams.tools.maps import render_day

    parent = h3.latlng_to_cell(48.8566, 2.3522, 8)
    kids = sorted(h3.cell_to_children(parent, 9))
    records = []
    for hour in range(3):
        window = {kids[0]: {f"a{i}" for i in range(10 + hour)}, kids[1]: {f"b{i}" for i in range(6)},
                  kids[2]: {f"c{i}" for i in range(6)}}
        records += [{"window_start": pd.Timestamp("2026-12-01T00:00Z") + pd.Timedelta(hours=hour), "region": r.region,
                     "cell": r.cell, "resolution": r.resolution, "members": list(r.members), "users": r.users, "k": 10}
                    for r in publish_regions(window)]
    data = render_day(pd.DataFrame(records), tmp_path / "day.png", "a day").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_map_rejects_window_and_day_together():
    result = CliRunner().invoke(main, ["stats", "map", "--window", "2026-12-01T00:00Z", "--day", "2026-12-01"])
    assert result.exit_code == 2 and "exclusive" in result.output
