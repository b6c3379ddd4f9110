"""`crosspaths crossings detect` output: Parquet or CSV, the same rows for any chunk length."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from geo.crossings import CrossingParams, detect_crossings
from schemas.timefmt import format_ts_column
from streams.cli import main
from streams.tools.offline import detect_crossings_file, ts_text


def _pings(n: int = 3000, seed: int = 3) -> pd.DataFrame:
    """A small dense square over 3 hours, in no particular order, ts as epoch milliseconds (as a file has them)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": [f"u{k:03d}" for k in rng.integers(0, 120, n)],
        "ts": (1_714_564_800_000 + rng.uniform(0, 3 * 3_600_000, n)).astype(np.int64),
        "lat": 48.86 + rng.uniform(0, 0.01, n), "lon": 2.34 + rng.uniform(0, 0.015, n),
        "accuracy_m": np.where(rng.random(n) < 0.1, 150.0, 10.0),
    })


def test_parquet_output_has_the_csv_rows(tmp_path):
    src = tmp_path / "pings.csv"
    _pings().to_csv(src, index=False)
    runner = CliRunner()
    for name in ("out.csv", "out.parquet"):
        result = runner.invoke(main, ["crossings", "detect", "--input", str(src), "--output", str(tmp_path / name),
                                      "--chunk-s", "600"])
        assert result.exit_code == 0, result.output
        assert f"crossings written to {tmp_path / name}" in result.output
    csv = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    parquet = pd.read_parquet(tmp_path / "out.parquet")
    assert len(csv) > 100 and list(parquet.columns) == list(csv.columns)
    assert parquet.astype(str).values.tolist() == csv.values.tolist()
    assert (tmp_path / "out.rejects.csv").exists() and not list(tmp_path.glob(".*.part"))


def test_any_chunk_length_gives_the_rows_of_the_whole_file(tmp_path):
    pings = _pings()
    src = tmp_path / "pings.parquet"
    pings.to_parquet(src)
    outs = []
    for chunk_s in (1.0, 900.0, 86400.0):
        run = detect_crossings_file(src, tmp_path / f"out{chunk_s:g}.csv", CrossingParams(crowd_users=4), chunk_s=chunk_s)
        outs.append(pd.read_csv(tmp_path / f"out{chunk_s:g}.csv", dtype=str, keep_default_na=False))
        assert run.crossings == len(outs[-1]) > 0
    assert outs[0].equals(outs[1]) and outs[0].equals(outs[2])
    whole = detect_crossings(pings.assign(ts=pings.ts / 1000.0), CrossingParams(crowd_users=4))
    assert outs[0].user_a.tolist() == whole.user_a.tolist() and outs[0].place.tolist() == whole.place.tolist()
    assert outs[0].ts.tolist() == format_ts_column(whole.ts.to_numpy()).tolist()


def test_an_empty_result_is_a_header_or_an_empty_table(tmp_path):
    src = tmp_path / "pings.csv"
    pd.DataFrame({"user_id": ["a"], "ts": ["2024-05-01T12:00:00Z"], "lat": [48.86], "lon": [2.34]}).to_csv(src, index=False)
    assert detect_crossings_file(src, tmp_path / "out.parquet").crossings == 0
    assert pd.read_parquet(tmp_path / "out.parquet").columns.tolist() == ["user_a", "user_b", "ts", "place", "distance_band"]
    assert detect_crossings_file(src, tmp_path / "out.csv").crossings == 0
    assert (tmp_path / "out.csv").read_text() == "user_a,user_b,ts,place,distance_band\n"


@pytest.mark.parametrize("seed", range(3))
def test_ts_text_is_format_ts_column(seed):
    rng = np.random.default_rng(seed)
    ts = np.r_[1_714_564_800 + rng.uniform(0, 86400 * 3, 2000).round(rng.integers(0, 7)),
               1_714_564_800.0, 1_714_564_800.0005, 1_714_564_800.9995, 1_714_564_800.9994999]
    assert ts_text(ts).tolist() == format_ts_column(ts).tolist()


def test_csv_output_is_what_pandas_writes(tmp_path):
    pings = _pings(800)
    src = tmp_path / "pings.csv"
    pings.to_csv(src, index=False)
    detect_crossings_file(src, tmp_path / "out.csv", chunk_s=300.0)
    whole = detect_crossings(pings.assign(ts=pings.ts / 1000.0), CrossingParams())
    assert len(whole) > 10
    expected = whole.assign(ts=format_ts_column(whole.ts.to_numpy())).to_csv(index=False)
    assert (tmp_path / "out.csv").read_text() == expected
