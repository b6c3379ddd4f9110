"""Timestamp columns (files of records): the scalar rules of schemas.timefmt, cell by cell, vectorized."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS, format_ts_column, parse_ts, parse_ts_column, ts_cell


def one_by_one(cells) -> list[float]:
    """parse_ts(ts_cell(cell)) for each cell, nan where it raises or the cell is missing."""
    out = []
    for cell in cells:
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            out.append(math.nan)
            continue
        try:
            out.append(parse_ts(ts_cell(cell)))
        except ValueError:
            out.append(math.nan)
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


@st.composite
def rfc3339(draw):
    """RFC 3339-ish strings: plain ones and the shapes only fromisoformat knows what to do with."""
    dt = draw(st.datetimes(datetime(1990, 1, 1), datetime(2110, 1, 1)))
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    digits = draw(st.integers(0, 9))
    if digits:
        text += "." + f"{dt.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    minutes = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    offset = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00", "", "+0100",
                                   f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"]))
    text += offset
    return draw(st.sampled_from([text, text.replace("T", " "), text.replace("T", "t"), " " + text]))


cells = st.one_of(
    rfc3339(),
    st.integers(MIN_EPOCH_MS - 10, MAX_EPOCH_MS + 10),
    st.integers(MIN_EPOCH_MS - 10, MAX_EPOCH_MS + 10).map(str),
    st.integers(MIN_EPOCH_MS, MAX_EPOCH_MS).map(lambda v: f" {v}\t"),
    st.integers(-10, 10**20).map(str),
    st.floats(allow_nan=True),
    st.sampled_from(["", "notatime", "2024-02-30T12:00:00Z", "2024-05-01T24:00:00Z", "2024-05-01T12:00:60Z",
                     "+1714564800000", "1714564800000.0", "2024-05-01", None, True]),
)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(cells, max_size=30))
def test_parse_ts_column_equals_parse_ts_cell_by_cell(values):
    expected = one_by_one(values)
    assert same(parse_ts_column(pd.Series(values, dtype=object)).tolist(), expected)
    text = [v for v in values if isinstance(v, str)]
    assert same(parse_ts_column(pd.Series(text, dtype="str")).tolist(), one_by_one(text))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(MIN_EPOCH_MS - 10, MAX_EPOCH_MS + 10), max_size=30))
def test_parse_ts_column_of_numbers_equals_parse_ts(values):
    assert same(parse_ts_column(pd.Series(values, dtype=np.int64)).tolist(), one_by_one(values))
    with_gaps = [float(v) for v in values] + [math.nan, 1714564800000.5]
    assert same(parse_ts_column(pd.Series(with_gaps)).tolist(), one_by_one(with_gaps))


def test_parse_ts_column_of_datetimes_takes_them_as_they_are():
    when = pd.Series(pd.to_datetime(["2024-05-01T12:00:00.250Z", None], utc=True))
    assert same(parse_ts_column(when).tolist(), [1714564800.25, math.nan])
    naive = pd.Series(pd.to_datetime(["2024-05-01T12:00:00"]))
    assert parse_ts_column(naive).tolist() == [1714564800.0]


@pytest.mark.parametrize("epoch_s, text", [
    (1714564800.0, "2024-05-01T12:00:00Z"),  # whole seconds: no milliseconds
    (1714564800.25, "2024-05-01T12:00:00.250Z"),
    (1714564800.0004, "2024-05-01T12:00:00Z"),  # rounded to the millisecond
    (1714564800.9996, "2024-05-01T12:00:01Z"),
])
def test_format_ts_column(epoch_s, text):
    assert format_ts_column([epoch_s]).tolist() == [text]


def test_format_ts_column_reads_back_with_parse_ts():
    t = datetime(2024, 5, 1, tzinfo=timezone.utc) + timedelta(milliseconds=123)
    assert parse_ts(format_ts_column([t.timestamp()])[0]) == t.timestamp()
