"""Offline crossing detection on files (streams.tools.offline and `crosspaths crossings detect`)."""
from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.crossings import CrossingParams, detect_crossings
from schemas.events import Ping, decode
from schemas.timefmt import parse_ts
from streams.cli import main
from streams.tools.offline import (REJECT_COLUMNS, OfflineRun, ProgressBars, UnusableFile, check_pings,
                                   default_rejects_path, detect_crossings_file)

P = CrossingParams()


def test_detect_crossings_file_csv_and_parquet(tmp_path):
    src = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "ts": ["2024-05-01T12:00:00Z", "2024-05-01T14:01:00.250+02:00", "1714564800000", "2024-05-01T12:00:00Z"],
            "lat": [48.86, 48.8601, 48.8602, 10.0],
            "lon": [2.34, 2.3401, 2.3402, 10.0],
            "accuracy_m": [5.0, None, 20.0, 5.0],
        }
    )
    src.to_csv(tmp_path / "in.csv", index=False)
    assert detect_crossings_file(tmp_path / "in.csv", tmp_path / "out.csv", P).crossings == 3
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["user_a", "user_b", "ts", "place", "distance_band"]
    assert set(zip(out.user_a, out.user_b)) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert set(out.ts) == {"2024-05-01T12:01:00.250Z", "2024-05-01T12:00:00Z"}
    pq = src.assign(ts=[1714564800000, 1714564860250, 1714564800000, 1714564800000])
    pq.to_parquet(tmp_path / "in.parquet")
    assert detect_crossings_file(tmp_path / "in.parquet", tmp_path / "out2.csv", P).crossings == 3
    assert pd.read_csv(tmp_path / "out2.csv").equals(out)
    with pytest.raises(ValueError, match="must end in .csv or .parquet"):
        detect_crossings_file(tmp_path / "in.json", tmp_path / "x.csv", P)


# --------------------------------------------------------------------------- bad rows

GOOD = [  # user_id, ts, lat, lon, accuracy_m (as CSV cells)
    ("a", "2024-05-01T12:00:00Z", "48.86", "2.34", "5"),
    ("b", "2024-05-01T14:01:00.250+02:00", "48.8601", "2.3401", ""),
    ("b", "2024-05-01T10:01:00Z", "48.8601", "2.3401", "7"),
    ("l", "1714564800000", "48.86002", "2.34", "1"),
    ("far", "1714564800000", "10", "10", "5"),
    ("blurry", "1714564800000", "48.86", "2.34", "150"),  # valid, but too inaccurate to be used
]
BAD = [  # cells, then the reject's field, value (as read: numbers as pandas reads them) and reason
    (("c", "notatime", "48.86", "2.34", "5"), "ts", "notatime", "bad_timestamp"),
    (("", "2024-05-01T12:00:00Z", "48.86", "2.34", "5"), "user_id", "", "missing_field"),
    (("d", "2024-05-01T12:00:00Z", "123.4", "2.34", "5"), "lat", "123.4", "out_of_range"),
    (("e", "1714564800000", "48.86", "abc", "5"), "lon", "abc", "wrong_type"),
    (("f", "2024-05-01T12:00:00Z", "48.86", "2.34", "-1"), "accuracy_m", "-1.0", "negative_accuracy"),
    (("g h", "2024-05-01T12:00:00Z", "48.86", "2.34", "1"), "user_id", "g h", "bad_user_id"),
    (("x" * 129, "2024-05-01T12:00:00Z", "48.86", "2.34", "1"), "user_id", "x" * 129, "bad_user_id"),
    (("i", "2024-05-01T12:00:00", "48.86", "2.34", "1"), "ts", "2024-05-01T12:00:00", "bad_timestamp"),
    (("j", "2024-05-01T12:00:00.5Z", "48.86", "2.34", "inf"), "accuracy_m", "inf", "not_finite"),
    (("k", "17145648000001", "48.86", "2.34", "1"), "ts", "17145648000001", "bad_timestamp"),
    (("m", "2024-05-01T12:00:00Z", "", "2.34", "1"), "lat", "", "missing_field"),
    (("n", "", "48.86", "2.34", "1"), "ts", "", "missing_field"),
]


def _write_csv(path, rows):
    lines = ["user_id,ts,lat,lon,accuracy_m"] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _good_frame(rows) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [r[0] for r in rows],
        "ts": [parse_ts(int(r[1])) if r[1].isdigit() else parse_ts(r[1]) for r in rows],
        "lat": [float(r[2]) for r in rows], "lon": [float(r[3]) for r in rows],
        "accuracy_m": [float(r[4]) if r[4] else math.nan for r in rows],
    })


def test_bad_rows_are_rejected_with_their_row_and_the_good_ones_processed(tmp_path):
    rows, expected = [], []
    for i in range(max(len(GOOD), len(BAD))):  # good and bad rows interleaved
        if i < len(BAD):
            cells, field, value, reason = BAD[i]
            rows.append(cells)
            expected.append((len(rows), field, value, reason))  # row 1 = the first data row
        if i < len(GOOD):
            rows.append(GOOD[i])
    src, out = tmp_path / "pings.csv", tmp_path / "crossings.csv"
    _write_csv(src, rows)
    run = detect_crossings_file(src, out, P)
    assert run == OfflineRun(len(rows), len(GOOD), len(BAD), run.crossings, tmp_path / "crossings.rejects.csv")
    rejects = pd.read_csv(run.rejects_path, dtype=str, keep_default_na=False)
    assert list(rejects.columns) == REJECT_COLUMNS
    assert [(int(r.row), r.field, r.value, r.reason) for r in rejects.itertuples()] == expected
    assert all(rejects.message.str.len() > 0)
    # The crossings are exactly those of the good rows alone.
    want = detect_crossings(_good_frame(GOOD), P)
    got_crossings = pd.read_csv(out)
    assert run.crossings == len(want) > 0
    assert list(zip(got_crossings.user_a, got_crossings.user_b, got_crossings.place, got_crossings.distance_band)) == \
        list(zip(want.user_a, want.user_b, want.place, want.distance_band))
    assert [parse_ts(t) for t in got_crossings.ts] == want.ts.round(3).tolist()


def test_rejects_option_and_summary_line(tmp_path):
    src, out, rejects = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "elsewhere" / "bad.csv"
    rejects.parent.mkdir()
    _write_csv(src, list(GOOD) + [b[0] for b in BAD[:3]])
    result = CliRunner().invoke(main, ["crossings", "detect", "--input", str(src), "--output", str(out),
                                       "--rejects", str(rejects)])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1  # one summary line, no traceback, no progress bar (not a terminal)
    assert (f"{len(GOOD) + 3} rows read: {len(GOOD)} accepted, 3 rejected (listed in {rejects}); "
            f"3 crossings written to {out}") in result.output
    assert len(pd.read_csv(rejects)) == 3
    assert default_rejects_path(out) == tmp_path / "out.rejects.csv" and not default_rejects_path(out).exists()


@pytest.mark.parametrize("content, name, message", [
    ("user_id,ts,lat\na,1714564800000,1\n", "in.csv", "lack ['lon']"),
    ("x", "in.json", "must end in .csv or .parquet"),
    ('user_id,ts,lat,lon\n"a,1\n', "in.csv", "EOF inside string"),
    ("\x1f\x8b\x08garbage", "in.csv.gz", "end-of-stream"),
    ("", "in.csv", "No columns to parse"),
    ("not parquet", "in.parquet", "Parquet"),
])
def test_an_unusable_file_is_a_one_line_error(tmp_path, content, name, message):
    src = tmp_path / name
    src.write_bytes(content.encode("latin-1"))
    with pytest.raises(UnusableFile, match=re.escape(message)):
        detect_crossings_file(src, tmp_path / "out.csv", P)
    result = CliRunner().invoke(main, ["crossings", "detect", "--input", str(src), "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1 and message in result.output
    assert "Traceback" not in result.output


ROW_CELLS = {
    "user_id": st.one_of(st.sampled_from(["a", "b_1", "", "g h", "é", "x" * 128, "x" * 129, "007"]), st.none()),
    "ts": st.one_of(st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123+02:00", "2024-05-01T12:00:00",
                                     "1714564800000", "17145648000001", "soon", "", "1714564800000.5"]),
                    st.integers(0, 2 * 10**12), st.none()),
    "lat": st.one_of(st.floats(-100, 100), st.sampled_from(["abc", "", "nan", "inf", "1e1"]), st.none()),
    "lon": st.one_of(st.floats(-200, 200), st.sampled_from(["abc", "-inf", "180"]), st.none()),
    "accuracy_m": st.one_of(st.floats(-5, 500), st.just(math.nan), st.sampled_from(["", "x", "0"]), st.none()),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.fixed_dictionaries(ROW_CELLS), min_size=1, max_size=20))
def test_check_pings_accepts_what_the_stream_accepts_with_its_values(rows):
    """Each row is accepted iff decode() accepts it as a geo-pings message, with decode's values."""
    raw = pd.DataFrame(rows, dtype=object)
    good, rejects = check_pings(raw)
    accepted = []
    for row in rows:
        record = {k: (int(v) if k == "ts" and isinstance(v, str) and v.isdigit() else
                      float(v) if k != "user_id" and k != "ts" and isinstance(v, str) and _is_float(v) else v)
                  for k, v in row.items() if v is not None and v != "" and not (isinstance(v, float) and math.isnan(v))}
        result = decode("ping", json.dumps(record).encode(), now=math.inf)
        if isinstance(result, Ping):
            accepted.append((result.user_id, result.ts, result.lat, result.lon,
                             math.nan if result.accuracy_m is None else result.accuracy_m))
    assert len(good) + len(rejects) == len(rows)
    got = list(good.itertuples(index=False, name=None))
    assert len(got) == len(accepted)
    for g, a in zip(got, accepted):
        assert g[:4] == a[:4] and (g[4] == a[4] or math.isnan(g[4]) and math.isnan(a[4]))


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- options


def test_zero_is_a_value_not_the_default(tmp_path):
    """--window-s 0 means T = 0 (it once meant the default, 300); --distance-m 0 is an error."""
    rows = [("a", "1714564800000", "48.86", "2.34", "5"), ("b", "1714564860000", "48.86", "2.34", "5"),
            ("c", "1714568400000", "48.86", "2.34", "5"), ("d", "1714568400000", "48.86", "2.34", "5")]
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    _write_csv(src, rows)
    runner = CliRunner()
    result = runner.invoke(main, ["crossings", "detect", "--input", str(src), "--output", str(out), "--window-s", "0"])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out)
    assert set(zip(got.user_a, got.user_b)) == {("c", "d")}  # a and b are 60 s apart: no crossing with T = 0
    want = detect_crossings(_good_frame(rows), CrossingParams(window_s=0))
    assert list(zip(got.user_a, got.user_b)) == list(zip(want.user_a, want.user_b))
    result = runner.invoke(main, ["crossings", "detect", "--input", str(src), "--output", str(out)])
    assert set(zip(*pd.read_csv(out)[["user_a", "user_b"]].to_numpy().T)) == {("a", "b"), ("c", "d")}
    for option, value, message in [("--distance-m", "0", "distance_m=0.0 must be > 0"),
                                   ("--distance-m", "nan", "distance_m=nan must be a number"),
                                   ("--window-s", "-1", "window_s=-1.0 must be finite and >= 0")]:
        result = runner.invoke(main, ["crossings", "detect", "--input", str(src), "--output", str(out), option, value])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_distance_above_the_stream_partition_cell_is_fine_offline(tmp_path):
    rows = [("a", "1714564800000", "48.86", "2.34", "5"), ("b", "1714564800000", "48.87", "2.34", "5")]  # ~1.1 km
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    _write_csv(src, rows)
    result = CliRunner().invoke(main, ["crossings", "detect", "--input", str(src), "--output", str(out),
                                       "--distance-m", "2000"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 1


# --------------------------------------------------------------------------- progress


def test_the_search_reports_its_progress():
    rng = np.random.default_rng(1)
    n = 3000
    frame = pd.DataFrame({"user_id": [f"u{i % 50}" for i in range(n)], "ts": rng.uniform(0, 3600, n),
                          "lat": 48.85 + rng.uniform(0, 0.01, n), "lon": 2.35 + rng.uniform(0, 0.01, n)})
    seen = []
    from geo.crossings import search

    with pytest.MonkeyPatch.context() as mp:  # small chunks, to see several calls
        real = search._matching_pairs
        mp.setattr(search, "_matching_pairs", lambda *a, **k: real(*a, chunk=1000, **k))
        with_progress = detect_crossings(frame, P, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1000, n), (2000, n), (3000, n)]
    assert with_progress.equals(detect_crossings(frame, P))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal_and_not_when_quiet():
    piped = io.StringIO()
    ProgressBars(file=piped)("reading", 10, 100, "B")
    assert piped.getvalue() == ""
    quiet = _Terminal()
    ProgressBars(quiet=True, file=quiet)("reading", 10, 100, "B")
    assert quiet.getvalue() == ""
    terminal = _Terminal()
    with ProgressBars(file=terminal) as bars:
        bars("reading", 50, 100, "B")
        bars("reading", 100, 100, "B")
        bars("detecting", 7, 7, " pings")
    assert "reading: 100%" in terminal.getvalue() and "detecting: 100%" in terminal.getvalue()


def test_detect_crossings_file_reports_reading_and_detecting(tmp_path):
    src = tmp_path / "in.csv"
    _write_csv(src, GOOD)
    calls = []
    detect_crossings_file(src, tmp_path / "out.csv", P, progress=lambda *call: calls.append(call))
    assert calls[0] == ("reading", src.stat().st_size, src.stat().st_size, "B")
    assert calls[-1] == ("detecting", 5, 5, " pings")  # the usable pings (not the blurry one)
