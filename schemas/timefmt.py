"""Timestamps on the wire: RFC 3339 strings or integer epoch milliseconds in, RFC 3339 UTC out."""
from __future__ import annotations

import functools
import math
import numbers
import re
from datetime import datetime, timezone

from schemas.reprs import shown

# Plausible range for epoch milliseconds: 2000-01-01 .. 2100-01-01.
MIN_EPOCH_MS = 946_684_800_000
MAX_EPOCH_MS = 4_102_444_800_000

# RFC 3339 section 5.6 date-time: what `ts` strings must look like, checked as it stands (no
# surrounding whitespace). The published JSON Schemas carry the same pattern (schemas.events).
RFC3339_PATTERN = (r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]"
                   r":[0-5][0-9](?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$")
_RFC3339 = re.compile(RFC3339_PATTERN[1:-1])
_LOCAL_TIME = re.compile(RFC3339_PATTERN[1:RFC3339_PATTERN.index("(?:[Zz]")])  # the same without its offset


def parse_ts(value: object) -> float:
    """Epoch seconds for an RFC 3339 string or integer epoch milliseconds; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"ts={value!r} is a boolean, expected an RFC 3339 string or integer epoch milliseconds")
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value <= MAX_EPOCH_MS:
            raise ValueError(f"ts={shown(value)} epoch milliseconds is outside years 2000-2100")
        return value / 1000.0
    if isinstance(value, str):
        if _RFC3339.fullmatch(value) is None:
            if _LOCAL_TIME.fullmatch(value) is not None:
                raise ValueError(f"ts={shown(value)} has no UTC offset; RFC 3339 requires 'Z' or '+hh:mm'")
            raise ValueError(f"ts={shown(value)} is not an RFC 3339 date-time (e.g. 2026-11-30T12:00:00Z)")
        try:
            dt = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:  # the shape is right, the date is not (e.g. February 30)
            raise ValueError(f"ts={shown(value)} is not a valid date-time") from None
        return dt.timestamp()
    raise ValueError(f"ts={shown(value)} must be an RFC 3339 string or integer epoch milliseconds")


def format_ts(epoch_s: float) -> str:
    """RFC 3339 UTC string (millisecond precision) for epoch seconds.

    What `datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds")` gives
    (microseconds rounded half to even, then cut to milliseconds), with the date and time of day
    cached per second: the pair stage formats two timestamps per reported crossing.
    """
    if not epoch_s >= 0:
        return _format_ts_slow(epoch_s)
    frac, whole = math.modf(epoch_s)
    us = round(frac * 1e6)
    second = int(whole)
    if us >= 1_000_000:
        second, us = second + 1, us - 1_000_000
    return f"{_second_text(second)}.{us // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(second: int) -> str:
    return datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _format_ts_slow(epoch_s: float) -> str:
    dt = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- columns (files of records)
# Tables (CSV, Parquet) carry no JSON types: a ts cell of digits is integer epoch milliseconds, as a
# JSON integer would be. pandas/numpy are imported by the column forms only: the stream's per-message
# path (schemas.events) needs the scalar forms above.

_DIGITS = re.compile(r"[ \t]*-?[0-9]+[ \t]*")
# RFC 3339 shapes that pandas parses exactly as parse_ts (datetime.fromisoformat) does: at most 6
# fractional digits (pandas keeps nanoseconds, fromisoformat microseconds); anything else goes
# through parse_ts itself.
_RFC3339_PLAIN = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
                  r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")


def ts_cell(value: object) -> object:
    """The wire value a table cell of a ts column stands for: digit strings and whole numbers are epoch ms (int)."""
    if isinstance(value, str):
        return int(value) if _DIGITS.fullmatch(value) else value
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    return value


def parse_ts_column(cells):
    """parse_ts(ts_cell(cell)) over a pandas Series, as epoch seconds; nan where that raises or the cell is missing.

    A datetime column is taken as it is (naive times as UTC).
    """
    import numpy as np
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(cells):
        s = pd.to_datetime(cells, utc=True)
        return (s - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
    out = np.full(len(cells), np.nan)
    if pd.api.types.is_bool_dtype(cells):
        return out
    if pd.api.types.is_numeric_dtype(cells):
        ms = cells.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = (ms >= MIN_EPOCH_MS) & (ms <= MAX_EPOCH_MS) & (ms == np.floor(ms))
        out[whole] = ms[whole] / 1000.0
        return out
    cells = cells.reset_index(drop=True)
    if isinstance(cells.dtype, pd.StringDtype):
        text = cells  # pyarrow-backed where available: its regex engine is several times faster than re
    else:
        cells = cells.astype(object)
        text = cells.where(cells.map(type) == str)  # str cells; nan for the others
    digits = text.str.fullmatch(_DIGITS.pattern).fillna(False).to_numpy(dtype=bool)
    if digits.any():
        ms = pd.to_numeric(text[digits], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ok = (ms >= MIN_EPOCH_MS) & (ms <= MAX_EPOCH_MS)
        out[np.flatnonzero(digits)[ok]] = ms[ok] / 1000.0
    plain = np.zeros(len(cells), dtype=bool)
    if not digits.all():
        plain[~digits] = text[~digits].str.fullmatch(_RFC3339_PLAIN).fillna(False).to_numpy(dtype=bool)
    if plain.any():
        parsed = pd.to_datetime(text[plain], format="ISO8601", utc=True, errors="coerce")
        ok = parsed.notna().to_numpy()
        # whole microseconds (exact in int64 and in float64 for 2000-2100), then one rounding: as timestamp()
        us = ((parsed[ok] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(dtype=np.int64)
        out[np.flatnonzero(plain)[ok]] = us / 1e6
    rest = np.flatnonzero(~digits & ~plain | (plain & np.isnan(out)))
    for i, cell in zip(rest.tolist(), cells.iloc[rest].tolist()):
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            continue
        try:
            out[i] = parse_ts(ts_cell(cell))
        except ValueError:
            pass
    return out


def format_ts_column(epoch_s):
    """RFC 3339 UTC strings of many epoch seconds: '...:SSZ', or '...:SS.mmmZ' when not whole seconds.

    Unlike format_ts, whole seconds carry no milliseconds (the offline tools' output format).
    """
    import numpy as np
    import pandas as pd

    ms = np.round(np.asarray(epoch_s, dtype=np.float64) * 1000.0).astype(np.int64)
    dt = pd.to_datetime(ms, unit="ms", utc=True)
    whole = dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frac = dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").str.slice(0, 23) + "Z"
    return np.where(ms % 1000 == 0, whole, frac)
