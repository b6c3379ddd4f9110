"""Crossings of a file of pings, offline (backfills, audits): read, check each row as the stream does, detect, write.

A row is judged by the stream's own rules: `schemas.events.decode`, as if the row were a message on
geo-pings (table cells carry no JSON types: a number-looking cell is a number, a ts cell of digits
integer epoch milliseconds, as `schemas.timefmt.ts_cell` says). A refused row is written to a
rejects file with its row number, field, value and the stream's reason, and counted; the other rows
are processed with geo.crossings.detect_crossings, in time chunks (`detect_crossings_chunked`: the same
rows, in memory bounded by a chunk's matches). Only a file that cannot be read as pings at all
(unknown extension, unreadable, a required column missing) stops the run, with `UnusableFile`.

Most rows are plainly valid, so they are checked column by column with numpy (the same rules; a
property test holds that this path accepts only what decode accepts, with the same values); decode
itself runs on the rest, to accept them after all or to say why not.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geo.crossings import CrossingParams, is_usable
from geo.crossings.search import detect_crossings_chunked
from geo.zones import SensitiveZones
from schemas.events import USER_ID_PATTERN, Rejection, decode
from schemas.timefmt import format_ts_column, parse_ts_column, ts_cell

PING_COLUMNS = ("user_id", "ts", "lat", "lon", "accuracy_m")  # in the order the stream checks them
REQUIRED_COLUMNS = ("user_id", "ts", "lat", "lon")
CROSSING_COLUMNS = ["user_a", "user_b", "ts", "place", "distance_band"]
REJECT_COLUMNS = ["row", "field", "value", "reason", "message"]  # row: 1 = the first data row (header not counted)
CHUNK_ROWS = 200_000
DEFAULT_CHUNK_S = 3600.0  # time chunks of the search (an hour: the default cooldown period, 12 crowd slices)

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


@dataclass
class _PingColumns:
    """The accepted, usable pings of a file, compactly: ~28 bytes a ping (a user id is kept once)."""

    users: dict[str, int]
    codes: list[np.ndarray]
    ts: list[np.ndarray]
    lat: list[np.ndarray]
    lon: list[np.ndarray]

    def add(self, good: pd.DataFrame, params: CrossingParams) -> None:
        """Keep the usable pings of checked rows (the others never take part in a crossing)."""
        good = good[is_usable(good["accuracy_m"].to_numpy(), params)]
        local, names = pd.factorize(good["user_id"])
        users = self.users
        to_code = np.fromiter((users.setdefault(name, len(users)) for name in names), dtype=np.int32, count=len(names))
        self.codes.append(to_code[local])
        for column in ("ts", "lat", "lon"):
            getattr(self, column).append(good[column].to_numpy(dtype=np.float64))

    def frame(self) -> pd.DataFrame:
        """The pings as detect_crossings takes them, user_id as a categorical of the ids, sorted by time (the
        chunked search then needs no sorted copy of its own); the parts are released as they are joined."""
        ts = np.concatenate(self.ts) if self.ts else np.empty(0)
        self.ts = []
        order = np.argsort(ts, kind="stable")
        columns = {"ts": ts[order]}
        del ts
        for name, dtype in (("codes", np.int32), ("lat", np.float64), ("lon", np.float64)):
            parts = getattr(self, name)
            setattr(self, name, [])
            columns[name] = (np.concatenate(parts) if parts else np.empty(0, dtype))[order]
            del parts
        names = pd.Index(list(self.users), dtype=object)
        return pd.DataFrame({"user_id": pd.Categorical.from_codes(columns["codes"], categories=names),
                             "ts": columns["ts"], "lat": columns["lat"], "lon": columns["lon"]})


def read_pings(input_path, rejects_path, params: CrossingParams = CrossingParams(),
               progress: Progress | None = None) -> tuple[pd.DataFrame, int, int, int]:
    """The usable accepted pings of a file, and counts (rows, accepted, rejected); refused rows go to rejects_path as CSV.

    Memory holds the checked columns only (~28 bytes a usable ping); rejects are written chunk by chunk.
    """
    pings, rows, accepted, rejected = _PingColumns({}, [], [], [], []), 0, 0, 0
    with _replacing(Path(rejects_path)) as part, open(part, "w", newline="") as out:
        out.write(",".join(REJECT_COLUMNS) + "\n")
        for chunk in read_chunks(Path(input_path), progress):
            good, bad = check_pings(chunk, first_row=rows + 1)
            rows += len(chunk)
            accepted, rejected = accepted + len(good), rejected + len(bad)
            pings.add(good, params)
            if len(bad):
                bad.to_csv(out, index=False, header=False, columns=REJECT_COLUMNS)
    return pings.frame(), rows, accepted, rejected


def detect_crossings_file(input_path, output_path, params: CrossingParams = CrossingParams(),
                          zones: SensitiveZones | None = None, rejects_path=None,
                          progress: Progress | None = None, chunk_s: float = DEFAULT_CHUNK_S) -> OfflineRun:
    """Detect crossings in a CSV/Parquet file of pings; write them (Parquet if output_path ends in .parquet, else CSV)
    and the refused rows (CSV).

    The search goes through time chunks of about chunk_s (geo.crossings.detect_crossings_chunked:
    the rows of detect_crossings on the whole file), writing each chunk's crossings as it goes, so
    memory is the file's checked columns plus one chunk's matches, however dense the file.
    """
    output_path = Path(output_path)
    rejects_path = default_rejects_path(output_path) if rejects_path is None else Path(rejects_path)
    pings, rows, accepted, rejected = read_pings(input_path, rejects_path, params, progress)
    searched = None if progress is None else (lambda done, total: progress("detecting", done, total, " pings"))
    crossings = 0
    with _replacing(output_path) as part, _CrossingWriter(part, parquet=output_path.suffix.lower() == ".parquet") as out:
        for frame in detect_crossings_chunked(pings, params, zones, chunk_s=chunk_s, progress=searched):
            out.write(frame)
            crossings += len(frame)
    return OfflineRun(rows, accepted, rejected, crossings, rejects_path)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A file beside `path` to write; it replaces `path` if the block ends normally, else it is removed."""
    part = path.with_name(f".{path.name}.part")
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


class _CrossingWriter:
    """Crossing rows appended to a CSV or Parquet file, frame by frame, with pyarrow; ts as RFC 3339 UTC text in both.

    CSV cells are written unquoted, as pandas' to_csv writes them: user ids (schemas.events.USER_ID_PATTERN),
    H3 cells, bands and times never hold a comma, a quote or a line break.
    """

    def __init__(self, path: Path, parquet: bool) -> None:
        import pyarrow as pa

        self.path, self.parquet = path, parquet
        self._schema = pa.schema([(name, pa.string()) for name in CROSSING_COLUMNS])
        self._file = None

    def __enter__(self) -> "_CrossingWriter":
        if self.parquet:
            import pyarrow.parquet as pq

            self._file = pq.ParquetWriter(self.path, self._schema)
        else:
            self._file = open(self.path, "wb")
            self._file.write((",".join(CROSSING_COLUMNS) + "\n").encode())
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        import pyarrow as pa

        frame = frame.assign(ts=ts_text(frame["ts"].to_numpy()))[CROSSING_COLUMNS]
        table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
        if self.parquet:
            self._file.write_table(table)
        else:
            import pyarrow.csv as csv

            csv.write_csv(table, self._file, csv.WriteOptions(include_header=False, quoting_style="none"))

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()


_MS_SUFFIX = np.asarray(["Z"] + [f".{k:03d}Z" for k in range(1, 1000)], dtype=object)


def ts_text(epoch_s: np.ndarray) -> np.ndarray:
    """schemas.timefmt.format_ts_column's strings, formatting each distinct second once (~20x faster on crossings)."""
    ms = np.round(np.asarray(epoch_s, dtype=np.float64) * 1000.0).astype(np.int64)  # as format_ts_column rounds
    seconds, rest = np.divmod(ms, 1000)
    distinct, where = np.unique(seconds, return_inverse=True)
    stems = np.asarray([text[:-1] for text in format_ts_column(distinct.astype(np.float64))], dtype=object)  # '...:SS'
    return stems[where.reshape(-1)] + _MS_SUFFIX[rest]


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
