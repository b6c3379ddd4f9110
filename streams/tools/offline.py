"""Crossings of a file of pings, offline (backfills, audits): read, check each row as the stream does, detect, write.

A row is judged by the stream's own rules: `schemas.events.decode`, as if the row were a message on
geo-pings (table cells carry no JSON types: a number-looking cell is a number, a ts cell of digits
integer epoch milliseconds, as `schemas.timefmt.ts_cell` says). A refused row is written to a
rejects file with its row number, field, value and the stream's reason, and counted; the other rows
are processed with geo.crossings.detect_crossings. Only a file that cannot be read as pings at all
(unknown extension, unreadable, a required column missing) stops the run, with `UnusableFile`.

Most rows are plainly valid, so they are checked column by column with numpy (the same rules; a
property test holds that this path accepts only what decode accepts, with the same values); decode
itself runs on the rest, to accept them after all or to say why not.
"""
from __future__ import annotations

import json
import math
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geo.crossings import CrossingParams, detect_crossings
from geo.zones import SensitiveZones
from schemas.events import USER_ID_PATTERN, Rejection, decode
from schemas.timefmt import format_ts_column, parse_ts_column, ts_cell

PING_COLUMNS = ("user_id", "ts", "lat", "lon", "accuracy_m")  # in the order the stream checks them
REQUIRED_COLUMNS = ("user_id", "ts", "lat", "lon")
CROSSING_COLUMNS = ["user_a", "user_b", "ts", "place", "distance_band"]
REJECT_COLUMNS = ["row", "field", "value", "reason", "message"]  # row: 1 = the first data row (header not counted)
CHUNK_ROWS = 200_000

# (phase, done, total or None, unit): how far reading ("reading") and the search ("detecting") are.
Progress = Callable[[str, int, "int | None", str], None]


class UnusableFile(ValueError):
    """The input cannot be read as pings at all; the message says why, in one line."""


@dataclass(frozen=True)
class OfflineRun:
    """What a detect_crossings_file run did."""

    rows: int
    accepted: int
    rejected: int
    crossings: int
    rejects_path: Path

    def summary(self, output: Path) -> str:
        """One line for the operator."""
        return (f"{self.rows} rows read: {self.accepted} accepted, {self.rejected} rejected "
                f"(listed in {self.rejects_path}); {self.crossings} crossings written to {output}")


def default_rejects_path(output: Path) -> Path:
    """Where the rejects of a run writing `output` go by default: <output stem>.rejects.csv beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rejects.csv")


# --------------------------------------------------------------------------- reading


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_chunks(path: Path, progress: Progress | None = None) -> Iterator[pd.DataFrame]:
    """The rows of a .csv(.gz) or .parquet file of pings, in chunks; UnusableFile if it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_chunks(path, progress)
    elif suffix in (".csv", ".gz"):
        yield from _csv_chunks(path, progress)
    else:
        raise UnusableFile(f"input_path={str(path)!r} must end in .csv or .parquet")


def _require_columns(path: Path, columns) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UnusableFile(f"{path}: columns {list(columns)!r} lack {missing!r}")


def _csv_chunks(path: Path, progress: Progress | None) -> Iterator[pd.DataFrame]:
    total = path.stat().st_size
    dtypes = {"user_id": str}  # ids such as 007 are text; the rest is typed by pandas, then checked
    try:
        with open(path, "rb") as raw:
            reader = pd.read_csv(raw, dtype=dtypes, chunksize=CHUNK_ROWS,
                                 compression="gzip" if path.suffix.lower() == ".gz" else None)
            with reader:  # a header alone still gives one (empty) chunk
                for chunk in reader:
                    _require_columns(path, chunk.columns)
                    if progress is not None:
                        progress("reading", raw.tell(), total, "B")
                    yield chunk
    except UnusableFile:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as exc:  # pandas' parser errors are ValueErrors
        raise UnusableFile(f"{path}: {_one_line(exc)}") from None


def _parquet_chunks(path: Path, progress: Progress | None) -> Iterator[pd.DataFrame]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
        _require_columns(path, source.schema_arrow.names)
        total, done = source.metadata.num_rows, 0
        for batch in source.iter_batches(batch_size=CHUNK_ROWS):
            chunk = batch.to_pandas()
            done += len(chunk)
            if progress is not None:
                progress("reading", done, total, " rows")
            yield chunk
    except UnusableFile:
        raise
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise UnusableFile(f"{path}: {_one_line(exc)}") from None


# --------------------------------------------------------------------------- checking


_USER_ID = USER_ID_PATTERN[1:-1]  # fullmatch: no trailing newline, as pydantic's `$`


def _numbers(cells: pd.Series) -> np.ndarray:
    """A numeric column as float64 (nan: missing or not a number); booleans are not numbers on the wire."""
    if pd.api.types.is_bool_dtype(cells):
        return np.full(len(cells), np.nan)
    return pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _wire_number(cell):
    """The JSON value of a number cell: a float if it reads as one, else the cell (decode says what is wrong)."""
    if isinstance(cell, (bool, np.bool_)):
        return bool(cell)
    if isinstance(cell, str):
        try:
            return float(cell)
        except ValueError:
            return cell
    try:
        return float(cell)
    except (TypeError, ValueError):
        return str(cell)


def _missing(cell) -> bool:
    """An empty cell: the field is missing from the message it stands for."""
    return (cell is None or cell is pd.NA or cell is pd.NaT or (isinstance(cell, float) and math.isnan(cell))
            or (isinstance(cell, str) and cell == ""))


def _wire_record(row: dict) -> dict:
    """The geo-pings message a table row stands for (missing cells left out)."""
    record = {}
    for name in PING_COLUMNS:
        cell = row.get(name)
        if _missing(cell):
            continue
        if name == "user_id":
            record[name] = str(cell)
        elif name == "ts":
            record[name] = ts_cell(cell)
        else:
            record[name] = _wire_number(cell)
    return record


def _text(cell) -> str:
    return "" if _missing(cell) else str(cell)


def check_pings(raw: pd.DataFrame, first_row: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows the stream accepts, as pings (user_id, ts in epoch seconds, lat, lon, accuracy_m), and the rejects.

    first_row: the row number of raw's first row (1 = the file's first data row).
    """
    raw = raw.reset_index(drop=True)
    n = len(raw)
    uid = raw["user_id"]
    if not isinstance(uid.dtype, pd.StringDtype):  # a table's user ids are text, whatever it typed
        uid = uid.where(uid.isna(), uid.astype(str).astype(object)).astype(object)
    ts = parse_ts_column(raw["ts"])
    lat, lon = _numbers(raw["lat"]), _numbers(raw["lon"])
    if "accuracy_m" in raw.columns:
        acc = _numbers(raw["accuracy_m"])
        empty = (raw["accuracy_m"].isna() | (raw["accuracy_m"] == "")).to_numpy(dtype=bool)
        acc_ok = empty | ((acc >= 0.0) & np.isfinite(acc))
    else:
        acc, acc_ok = np.full(n, np.nan), np.ones(n, dtype=bool)
    checks = {
        "user_id": uid.str.fullmatch(_USER_ID).fillna(False).to_numpy(dtype=bool),
        "ts": ~np.isnan(ts),
        "lat": (lat >= -90.0) & (lat <= 90.0),  # nan fails
        "lon": (lon >= -180.0) & (lon <= 180.0),
        "accuracy_m": acc_ok,
    }
    ok = np.logical_and.reduce(list(checks.values()))
    rejects = []
    for i in np.flatnonzero(~ok).tolist():
        row = raw.iloc[i].to_dict()
        result = decode("ping", json.dumps(_wire_record(row)).encode(), now=math.inf)
        if isinstance(result, Rejection):
            field = next(name for name, passed in checks.items() if not passed[i])
            rejects.append((first_row + i, field, _text(row.get(field)), result.reason.value, result.message))
        else:  # the column checks are stricter than decode here: decode's record counts
            uid.iat[i], ts[i], lat[i], lon[i] = result.user_id, result.ts, result.lat, result.lon
            acc[i] = np.nan if result.accuracy_m is None else result.accuracy_m
            ok[i] = True
    good = pd.DataFrame({"user_id": uid[ok].to_numpy(dtype=object), "ts": ts[ok], "lat": lat[ok], "lon": lon[ok],
                         "accuracy_m": acc[ok]})
    return good, pd.DataFrame(rejects, columns=REJECT_COLUMNS)


# --------------------------------------------------------------------------- the run


def detect_crossings_file(input_path, output_path, params: CrossingParams = CrossingParams(),
                          zones: SensitiveZones | None = None, rejects_path=None,
                          progress: Progress | None = None) -> OfflineRun:
    """Detect crossings in a CSV/Parquet file of pings; write them, and the refused rows, as CSV."""
    output_path = Path(output_path)
    rejects_path = default_rejects_path(output_path) if rejects_path is None else Path(rejects_path)
    goods, rejects, rows = [], [], 0
    for chunk in read_chunks(Path(input_path), progress):
        good, bad = check_pings(chunk, first_row=rows + 1)
        rows += len(chunk)
        goods.append(good)
        rejects.append(bad)
    pings = pd.concat(goods, ignore_index=True) if goods else _no_pings()
    refused = pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame(columns=REJECT_COLUMNS)
    searched = None if progress is None else (lambda done, total: progress("detecting", done, total, " pings"))
    out = detect_crossings(pings, params, zones, progress=searched)
    out["ts"] = format_ts_column(out["ts"].to_numpy()) if len(out) else pd.Series(dtype=object)
    out.to_csv(output_path, index=False, columns=CROSSING_COLUMNS)
    refused.to_csv(rejects_path, index=False, columns=REJECT_COLUMNS)
    return OfflineRun(rows, len(pings), len(refused), len(out), rejects_path)


def _no_pings() -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series(dtype=object), **{c: pd.Series(dtype=np.float64) for c in PING_COLUMNS[1:]}})


# --------------------------------------------------------------------------- progress


class ProgressBars:
    """A Progress that draws tqdm bars on stderr, one per phase; silent when quiet or stderr is no terminal."""

    def __init__(self, quiet: bool = False, file=None) -> None:
        self.file = sys.stderr if file is None else file
        isatty = getattr(self.file, "isatty", None)
        self.enabled = not quiet and bool(isatty and isatty())
        self._phase: str | None = None
        self._bar = None

    def __call__(self, phase: str, done: int, total: int | None, unit: str) -> None:
        if not self.enabled:
            return
        if phase != self._phase:
            from tqdm import tqdm

            self.close()
            self._phase = phase
            self._bar = tqdm(desc=phase, total=total, unit=unit, unit_scale=True, file=self.file, mininterval=0.5)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Finish the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._phase = None

    def __enter__(self) -> "ProgressBars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
