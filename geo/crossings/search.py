"""Batch crossing detection: every crossing of a frame of pings, by a grid search, then the cooldown.

Pings are put in latitude bands at least D high, each cut into >= 3 longitude cells at least as wide
as any within-D pair touching the band needs (or one whole-ring cell near the poles); each ping
looks at its own cell (later pings only), the next cell east and three cells of the band above,
within a time window. The final test is always model._match, shared with the streaming detector;
geo.oracle.brute_force_pairs holds both to the definition.

`detect_crossings_chunked` gives the same rows one time chunk at a time, for files of any size or
density: memory then holds one chunk's matches (and, in a crowd, not even those: the crowd rule
drops a crowd's pings before the pairwise search).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import h3
import numpy as np
import pandas as pd

from geo.crossings.model import (_DEG, _MARGIN, CrossingParams, _expand, _match, _outside_zones, cooldown_period,
                                 crowd_slice, distance_bands, is_usable, slice_s)
from geo.distance import EARTH_RADIUS_M, cos_lat, midpoint
from geo.zones import SensitiveZones
from schemas.timefmt import parse_ts_column

Progress = Callable[[int, int], None]  # (pings searched so far, pings in all), after each chunk of the search


def _distinct(values: np.ndarray) -> np.ndarray:
    """np.unique(values) for int64 keys by one sort (numpy 2's hash-based np.unique took ~40x longer on 1.6M keys)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if values.size else values


def _validate_coords(lat, lon, ts) -> None:
    lat, lon, ts = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float), np.asarray(ts, dtype=float)
    for name, arr, lo, hi in (("lat", lat, -90.0, 90.0), ("lon", lon, -180.0, 180.0)):
        bad = ~((arr >= lo) & (arr <= hi))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}={float(arr.flat[i])!r} (row {i}) is outside [{lo:g}, {hi:g}]")
    bad = ~np.isfinite(ts)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"ts={float(ts.flat[i])!r} (row {i}) is not a finite epoch-seconds value")



# --------------------------------------------------------------------------- grid


class _BatchGrid:
    """Latitude bands of height >= D, each cut into >= 3 lon cells at least D wide (or 1 whole ring)."""

    def __init__(self, distance_m: float):
        self.delta = distance_m / EARTH_RADIUS_M  # central angle, radians
        self.h_deg = math.degrees(self.delta) * (1 + _MARGIN) + 1e-12
        self.nbands = int(180.0 / self.h_deg) + 1
        self.nmax = int(360.0 / math.degrees(2 * math.asin(math.sin(self.delta / 2)))) + 2

    def band(self, lat: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((lat + 90.0) / self.h_deg), 0, self.nbands - 1).astype(np.int64)

    def n_lon(self, band: np.ndarray) -> np.ndarray:
        """Number of lon cells of each band (1 or >= 3), wide enough for pairs touching bands b-1..b+1."""
        lat_lo = -90.0 + (band - 1) * self.h_deg
        lat_hi = -90.0 + (band + 2) * self.h_deg
        worst = np.minimum(np.maximum(np.abs(lat_lo), np.abs(lat_hi)), 90.0)
        c = np.cos(worst * _DEG)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = math.sin(self.delta / 2) / c
            width = np.degrees(2 * np.arcsin(np.minimum(ratio, 1.0))) * (1 + _MARGIN) + 1e-12
            n = np.where((c > 0) & (ratio < 1.0), np.floor(360.0 / width), 1).astype(np.int64)
        return np.where(n >= 3, np.minimum(n, self.nmax - 1), 1)

    @staticmethod
    def lon_cell(lon: np.ndarray, n: np.ndarray) -> np.ndarray:
        return _BatchGrid.x_cell(np.mod(lon + 180.0, 360.0), n)

    @staticmethod
    def x_cell(x: np.ndarray, n: np.ndarray) -> np.ndarray:
        """lon_cell of x = (lon + 180) mod 360, in [0, 360): monotone in x."""
        return np.minimum(np.floor(x * n / 360.0).astype(np.int64), n - 1)


# --------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class _Pings:
    """Usable pings as arrays; user codes index the sorted names."""

    ts: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    user: np.ndarray  # int64 codes, code order == user id order
    names: np.ndarray  # object array of user ids, sorted


def _prepare(fixes: pd.DataFrame, params: CrossingParams, zones: SensitiveZones | None) -> _Pings:
    """Validated, usable, zone-free pings of a frame with columns user_id, ts, lat, lon[, accuracy_m]."""
    missing = {"user_id", "ts", "lat", "lon"} - set(fixes.columns)
    if missing:
        raise ValueError(f"fixes columns={sorted(fixes.columns)!r} lack {sorted(missing)!r}")
    ts = fixes["ts"]
    ts = parse_ts_column(ts) if pd.api.types.is_datetime64_any_dtype(ts) else np.asarray(ts, dtype=np.float64)
    lat = np.asarray(fixes["lat"], dtype=np.float64)
    lon = np.asarray(fixes["lon"], dtype=np.float64)
    _validate_coords(lat, lon, ts)
    keep = np.ones(len(ts), dtype=bool)
    if "accuracy_m" in fixes.columns:
        keep &= is_usable(pd.to_numeric(fixes["accuracy_m"], errors="coerce"), params)
    if zones:
        keep &= ~zones.contains(lat, lon)
    uid = fixes["user_id"]
    if isinstance(uid.dtype, pd.CategoricalDtype) and uid.cat.categories.astype(str).is_unique:
        # A file's reader keeps each user id once (4 bytes a row): rank the categories, not the rows.
        names, rank = np.unique(np.asarray(uid.cat.categories.astype(str), dtype=object), return_inverse=True)
        codes = np.where(uid.cat.codes.to_numpy() < 0, -1, rank.reshape(-1)[uid.cat.codes.to_numpy()])
    else:
        if not (pd.api.types.is_string_dtype(uid) or pd.api.types.is_object_dtype(uid)):
            uid = uid.astype(str)
        codes, names = pd.factorize(uid, sort=True)
    if (codes < 0).any():
        raise ValueError(f"user_id is missing in row {int(np.flatnonzero(codes < 0)[0])}")
    names = np.asarray(names, dtype=object)
    if not keep.all():
        ts, lat, lon, codes = ts[keep], lat[keep], lon[keep], codes[keep]
    return _Pings(np.ascontiguousarray(ts), lat, lon, codes.astype(np.int64), names)


class _CellTimeIndex:
    """Pings sorted by (grid cell, time) with O(1) or O(log n) lookup of a cell's pings in a time window."""

    def __init__(self, cell: np.ndarray, n_cells: int, ts: np.ndarray, window: float, force_search: bool = False):
        n = len(ts)
        order_t = np.argsort(ts, kind="stable")
        self.sorted_ts = ts[order_t]
        trank = np.empty(n, dtype=np.int64)
        trank[order_t] = np.arange(n, dtype=np.int64)  # position in time order, unique per ping
        M = np.int64(n + 1)
        self.order = np.argsort(cell * M + trank)  # cell < number of cells, so no overflow (checked by caller)
        self.cell = cell[self.order]
        self.trank = trank[self.order]
        self.n = n
        span = float(self.sorted_ts[-1] - self.sorted_ts[0])
        n_slabs = int(span / window) + 3 if window > 0 and span / window < 2**40 else 2**62
        self.table = not force_search and n_cells * n_slabs <= 8 * n + (1 << 20)
        if self.table:
            # Time slabs of length `window`: a window around slab s lies in slabs s-1..s+1, and the
            # pings of one cell over three consecutive slabs are contiguous in (cell, time) order.
            self.n_slabs = n_slabs
            self.slab = np.floor((ts[self.order] - self.sorted_ts[0]) / window).astype(np.int64) + 1
            counts = np.bincount(self.cell * n_slabs + self.slab, minlength=n_cells * n_slabs)
            self.offsets = np.zeros(len(counts) + 1, dtype=np.int32 if n < 2**31 else np.int64)
            np.cumsum(counts, out=self.offsets[1:])
        else:
            self.M = M
            self.skeys = self.cell * M + self.trank
            self.t_lo = np.searchsorted(self.sorted_ts, self.sorted_ts - window, side="left")[self.trank]
            self.t_hi = np.searchsorted(self.sorted_ts, self.sorted_ts + window, side="right")[self.trank]

    def forward_same_cell(self, src: np.ndarray):
        """For sorted positions src: [lo, hi) of later pings of the same cell within the window (superset)."""
        if self.table:
            hi = self.offsets[self.cell[src] * self.n_slabs + self.slab[src] + 2]
        else:
            hi = np.searchsorted(self.skeys, self.cell[src] * self.M + self.t_hi[src])
        return src + 1, hi

    def in_cell(self, src: np.ndarray, cells: np.ndarray):
        """For sorted positions src: [lo, hi) of pings of `cells` (-1 = none) within the window (superset)."""
        valid = cells >= 0
        if self.table:
            b = np.where(valid, cells, 0) * self.n_slabs + self.slab[src]
            lo, hi = self.offsets[b - 1], self.offsets[b + 2]
        else:
            base = cells * self.M
            lo = np.searchsorted(self.skeys, base + self.t_lo[src])
            hi = np.searchsorted(self.skeys, base + self.t_hi[src])
        return lo, np.where(valid, hi, lo)


def _matching_pairs(pings: _Pings, params: CrossingParams, chunk: int = 1 << 17, force_search: bool = False,
                    progress: Progress | None = None):
    """All matching ping pairs (i, j, distance) of prepared pings, each unordered pair once."""
    n = len(pings.ts)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
    if n < 2:
        return empty
    lat, lon, ts, users = pings.lat, pings.lon, pings.ts, pings.user

    grid = _BatchGrid(params.distance_m)
    band = grid.band(lat)
    b_min, b_max = int(band.min()), int(band.max())
    nl_table = grid.n_lon(np.arange(b_min, b_max + 2, dtype=np.int64))  # one entry per band (+ the one above)
    nl = nl_table[band - b_min]
    k = grid.lon_cell(lon, nl)
    # Per-band lon offsets keep the numbering compact (bands have slightly different cell counts).
    # The extent is taken on x = (lon + 180) mod 360, where cells are monotone (lon 180 is lon -180,
    # cell 0: taking lon.max() as the eastern end once gave a negative width).
    x = np.mod(lon + 180.0, 360.0)
    k_first = grid.x_cell(np.full(len(nl_table), x.min()), nl_table)
    kw = int((grid.x_cell(np.full(len(nl_table), x.max()), nl_table) - k_first).max()) + 1
    if (b_max - b_min + 1) * kw * (n + 1) < 2**62:
        n_cells = (b_max - b_min + 1) * kw

        def number(b, kk):
            rel = kk - k_first[np.minimum(b, b_max + 1) - b_min]
            ok = (b <= b_max) & (rel >= 0) & (rel < kw)
            return np.where(ok, (b - b_min) * kw + rel, -1)

    else:
        # Very wide extents: number the occupied cells densely instead.
        uniq = _distinct(band * grid.nmax + k)
        n_cells = len(uniq)

        def number(b, kk):
            c = b * grid.nmax + kk
            pos = np.minimum(np.searchsorted(uniq, c), len(uniq) - 1)
            return np.where(uniq[pos] == c, pos, -1)

    w = params.window_s * (1 + _MARGIN) + 1e-9 * max(1.0, float(np.abs(ts).max())) + 1e-6
    index = _CellTimeIndex(number(band, k), n_cells, ts, w, force_search)
    order = index.order
    lat_s, lon_s, ts_s, u_s = lat[order], lon[order], ts[order], users[order]
    cos_s = cos_lat(lat_s)
    band_s, k_s, nl_s = band[order], k[order], nl[order]
    up = band_s + 1
    nl_up = nl_table[up - b_min]
    k_up = grid.lon_cell(lon_s, nl_up)
    max_dlat = math.degrees(grid.delta) * (1 + _MARGIN) + 1e-9

    out_i, out_j, out_d = [], [], []
    for start in range(0, n, chunk):
        src = np.arange(start, min(n, start + chunk), dtype=np.int64)
        # same cell, later in (cell, time) order only
        parts = [(src, *index.forward_same_cell(src))]
        # next lon cell of the same band (only when the band has >= 3 cells)
        s2 = src[nl_s[src] >= 3]
        if s2.size:
            parts.append((s2, *index.in_cell(s2, number(band_s[s2], (k_s[s2] + 1) % nl_s[s2]))))
        # the band above: cells k'-1, k', k'+1 (or the single ring cell)
        s3 = src[up[src] < grid.nbands]
        for off in (-1, 0, 1):
            s4 = s3 if off == 0 else s3[nl_up[s3] >= 3]
            if s4.size:
                parts.append((s4, *index.in_cell(s4, number(up[s4], (k_up[s4] + off) % nl_up[s4]))))
        ci, cj = zip(*(_expand(*p) for p in parts))
        ci, cj = np.concatenate(ci), np.concatenate(cj)
        # cheap necessary conditions first, then the exact shared test
        pre = (u_s[ci] != u_s[cj]) & (np.abs(ts_s[ci] - ts_s[cj]) <= w) & (np.abs(lat_s[ci] - lat_s[cj]) <= max_dlat)
        ci, cj = ci[pre], cj[pre]
        mask, d = _match(ts_s[ci], lat_s[ci], lon_s[ci], cos_s[ci], u_s[ci], ts_s[cj], lat_s[cj], lon_s[cj], cos_s[cj], u_s[cj], params)
        out_i.append(order[ci[mask]])
        out_j.append(order[cj[mask]])
        out_d.append(d[mask])
        if progress is not None:
            progress(int(src[-1]) + 1, n)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


class _Crowds:
    """The crowd rule (geo.crossings.crowd) over a frame: which pings can still meet, which pairs are crowd pairs."""

    def __init__(self, pings: _Pings, params: CrossingParams):
        from geo.crossings.routing import route_many

        routes = route_many(pings.lat, pings.lon, None, params)
        codes, uniq = pd.factorize(pd.Series(routes.keys, dtype=object), sort=False)
        # Keys ranked in string order (route() compares names): the greater home key judges a pair.
        rank_of = np.empty(len(uniq), dtype=np.int64)
        rank_of[np.argsort(np.asarray(uniq, dtype=str), kind="stable")] = np.arange(len(uniq))
        key = rank_of[codes]
        slices = crowd_slice(pings.ts, params)
        self.s0 = int(slices.min())
        self.span = int(slices.max()) - self.s0 + 1
        if len(uniq) * self.span >= 2**62 // max(1, len(pings.names)):
            raise ValueError("the crowd rule cannot number units this many keys x slices x users apart; "
                             "split the input by time")
        rel = slices - self.s0
        unit = key * self.span + rel[routes.fix]
        person = _distinct(unit * len(pings.names) + pings.user[routes.fix])
        units, people = np.unique(person // len(pings.names), return_counts=True)
        self.crowds = units[people > params.crowd_users]  # sorted
        in_crowd = self._is_crowd(unit)
        # A ping can be in a crossing only at a key where its unit is not a crowd.
        self.alive = np.bincount(routes.fix, weights=~in_crowd, minlength=len(pings.ts)) > 0
        self.home = key[routes.home]  # routes list each fix's home first, one per fix
        self.rel = rel

    def _is_crowd(self, unit: np.ndarray) -> np.ndarray:
        if self.crowds.size == 0:
            return np.zeros(unit.shape, dtype=bool)
        at = np.minimum(np.searchsorted(self.crowds, unit), self.crowds.size - 1)
        return self.crowds[at] == unit

    def pair_ok(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Not crowd pairs: judged at the greater home key, neither ping's (key, slice) is a crowd."""
        judged = np.maximum(self.home[i], self.home[j]) * self.span
        return ~(self._is_crowd(judged + self.rel[i]) | self._is_crowd(judged + self.rel[j]))

    @classmethod
    def matching_pairs(cls, pings: _Pings, params: CrossingParams, progress: Progress | None = None):
        """_matching_pairs without crowd pairs, searching only pings that can still meet."""
        if params.crowd_users <= 0 or len(pings.ts) <= params.crowd_users:  # no unit can have more people
            return _matching_pairs(pings, params, progress=progress)
        rule = cls(pings, params)
        if rule.crowds.size == 0:
            return _matching_pairs(pings, params, progress=progress)
        keep = np.flatnonzero(rule.alive)
        i, j, d = _matching_pairs(_Pings(pings.ts[keep], pings.lat[keep], pings.lon[keep], pings.user[keep], pings.names),
                                  params, progress=progress)
        i, j = keep[i], keep[j]
        ok = rule.pair_ok(i, j)
        return i[ok], j[ok], d[ok]


# --------------------------------------------------------------------------- per pair and period


def _group_codes(pair: np.ndarray, period_rank: np.ndarray) -> np.ndarray:
    """One int64 per (pair, period), equal exactly for equal (pair, period)."""
    span = int(period_rank.max()) + 1 if period_rank.size else 1
    if int(pair.max(initial=0)) < (2**62) // span:
        return pair * span + period_rank
    order = np.lexsort((period_rank, pair))  # too many for one int64: number the groups in order
    p, q = pair[order], period_rank[order]
    codes = np.empty(len(pair), dtype=np.int64)
    codes[order] = np.cumsum(np.r_[True, (p[1:] != p[:-1]) | (q[1:] != q[:-1])]) - 1
    return codes


def _earliest_per_period(group: np.ndarray, ts_rank: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's first matches by (ts, distance): (the only ones of their group, the others grouped by group).

    Most groups (pair, period) have one match: one sort of int64 keys finds them; only the rest is
    sorted by (group, ts, distance), and all those tied with their group's first are kept.
    """
    if len(group) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(group)
    g = group[order]
    new = np.r_[True, g[1:] != g[:-1]]
    alone = new & np.r_[new[1:], True]
    several = order[~alone]
    if several.size == 0:
        return order, several
    sub = several[np.lexsort((d[several], ts_rank[several], group[several]))]
    g, t, dd = group[sub], ts_rank[sub], d[sub]
    new_group = np.r_[True, g[1:] != g[:-1]]
    first = np.flatnonzero(new_group)[np.cumsum(new_group) - 1]
    return order[alone], sub[(t == t[first]) & (dd == dd[first])]


def _break_ties(group: np.ndarray, place: np.ndarray) -> np.ndarray:
    """Positions keeping one row per group of rows tied on (ts, distance), grouped by group: the smallest place.

    model.supersedes' last keys are (place, band); a band is a function of the distance, so rows
    tied on distance have one band and the place decides. `place` holds H3 cell ints: every cell's
    string is its 15 hex digits, so the ints and the strings sort alike.
    """
    order = np.lexsort((place, group))
    g = group[order]
    return order[np.r_[True, g[1:] != g[:-1]]] if len(g) else order


try:  # the compiled function behind h3.api.basic_int.latlng_to_cell, without its Python wrapper (~40 % of a call)
    from h3._cy import latlng_to_cell as _h3_cell
except ImportError:  # pragma: no cover - another h3 layout
    from h3.api.basic_int import latlng_to_cell as _h3_cell


def _place_cells(lat: np.ndarray, lon: np.ndarray, resolution: int) -> np.ndarray:
    """H3 cells (uint64) of many points: what model.place_of names, as ints."""
    n = len(lat)
    return np.fromiter(map(_h3_cell, lat.tolist(), lon.tolist(), itertools.repeat(resolution, n)), dtype=np.uint64, count=n)


_STR = pd.Series(["x"]).dtype  # the dtype pandas gives a column of str (arrow-backed "str" from pandas 3 on)


def _text_column(values: np.ndarray, codes: np.ndarray):
    """values[codes] (values: str objects) as the column pandas would build from them, without a str object per row."""
    if len(codes) and isinstance(_STR, pd.StringDtype) and _STR.storage == "pyarrow":
        import pyarrow as pa

        return pd.array(pa.array(values.tolist(), pa.large_string()).take(pa.array(codes)), dtype=_STR)
    return values[codes]


@dataclass(frozen=True)
class _Reported:
    """detect_crossings' rows, with each row's pair code (user codes a * n + b) and cooldown period."""

    frame: pd.DataFrame
    pair: np.ndarray
    period: np.ndarray


def _report(pings: _Pings, params: CrossingParams, zones: SensitiveZones | None, progress: Progress | None = None,
            own_from: int = 0) -> _Reported:
    """The reported crossings of prepared pings; with own_from > 0 (pings sorted by time), only those whose
    later ping is at index >= own_from (the others are a chunk's context)."""
    i, j, d = _Crowds.matching_pairs(pings, params, progress=progress)
    if own_from > 0:
        own = np.maximum(i, j) >= own_from
        i, j, d = i[own], j[own], d[own]
    mid = None
    if zones and i.size:
        mlat, mlon, ok = _outside_zones(pings.lat[i], pings.lon[i], pings.lat[j], pings.lon[j], zones)
        i, j, d, mid = i[ok], j[ok], d[ok], (mlat[ok], mlon[ok])
    n_names = np.int64(len(pings.names))
    ui, uj = pings.user[i], pings.user[j]
    pair = np.minimum(ui, uj) * n_names + np.maximum(ui, uj)
    ts_values, ping_rank = np.unique(pings.ts, return_inverse=True)  # equal times, equal ranks
    ts_rank = np.maximum(ping_rank[i], ping_rank[j])
    cts = ts_values[ts_rank]  # the later ping's time
    period = cooldown_period(cts, params.cooldown_s)
    if params.cooldown_s == 0:  # every distinct time is its own period
        period_rank = ts_rank
    elif period.size and np.isfinite(period).all() and float(period.max() - period.min()) < 2**53:
        period_rank = (period - period.min()).astype(np.int64)
    else:
        period_rank = np.unique(period, return_inverse=True)[1].reshape(-1)
    group = _group_codes(pair, period_rank)
    alone, tied = _earliest_per_period(group, ts_rank, d)
    sel = np.concatenate([alone, tied])
    if mid is None:
        mlat, mlon = midpoint(pings.lat[i[sel]], pings.lon[i[sel]], pings.lat[j[sel]], pings.lon[j[sel]])
    else:  # the zones' test computed them already
        mlat, mlon = mid[0][sel], mid[1][sel]
    cells = _place_cells(np.atleast_1d(mlat), np.atleast_1d(mlon), params.place_resolution)
    keep = np.concatenate([np.arange(alone.size), alone.size + _break_ties(group[tied], cells[alone.size:])])
    sel, cells = sel[keep], cells[keep]
    # rows in (ts, user_a, user_b) order; pair codes sort as (user_a, user_b)
    pair, ts_rank = pair[sel], ts_rank[sel]
    if ts_values.size * int(n_names) ** 2 < 2**62:
        out = np.argsort(ts_rank * (n_names * n_names) + pair)  # unique keys: one int64 sort
    else:
        out = np.lexsort((pair, ts_rank))
    sel, cells, pair = sel[out], cells[out], pair[out]
    a, b = np.divmod(pair, n_names)
    place_codes, place_values = pd.factorize(cells)
    bands = distance_bands(d[sel], params)
    band_codes, band_values = pd.factorize(bands)
    frame = pd.DataFrame(
        {
            "user_a": _text_column(pings.names, a),
            "user_b": _text_column(pings.names, b),
            "ts": cts[sel],
            "place": _text_column(np.asarray([h3.int_to_str(int(c)) for c in place_values], dtype=object), place_codes),
            "distance_band": _text_column(np.asarray(band_values, dtype=object), band_codes),
        }
    )
    return _Reported(frame, pair, period[sel])


def detect_crossings(
    fixes: pd.DataFrame, params: CrossingParams = CrossingParams(), zones: SensitiveZones | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Reported crossings (user_a, user_b, ts, place, distance_band) of a frame of pings: per pair and
    cooldown period, the earliest crossing (ties: smallest distance, then place, then band; model.supersedes).

    `progress(searched, total)`, if given, is called as the search goes through the usable pings.
    """
    return _report(_prepare(fixes, params, zones), params, zones, progress).frame


# --------------------------------------------------------------------------- in time chunks


def detect_crossings_chunked(
    fixes: pd.DataFrame, params: CrossingParams = CrossingParams(), zones: SensitiveZones | None = None,
    chunk_s: float = 3600.0, progress: Progress | None = None,
) -> Iterator[pd.DataFrame]:
    """detect_crossings' rows, one frame per time chunk of about chunk_s that has any, in order: their
    concatenation is detect_crossings(fixes), and the search holds one chunk's matches at a time instead of the whole frame's.

    Chunks are whole crowd slices (crowd.slice_s, aligned on the epoch); each is searched with the
    pings of the window_s before it, extended to whole slices, so that every crowd unit it looks at is
    counted in full; a chunk keeps the crossings whose later ping is its own. A cooldown period cut by
    a chunk boundary keeps its earliest crossing, which is in the first chunk that has one (the rows
    already reported in the open period are carried to the next chunk). Input order does not matter.
    `progress(done, total)` counts usable pings.
    """
    if not chunk_s > 0:
        raise ValueError(f"chunk_s={chunk_s!r} must be > 0")
    pings = _prepare(fixes, params, zones)
    if len(pings.ts) and np.any(pings.ts[1:] < pings.ts[:-1]):
        order = np.argsort(pings.ts, kind="stable")
        pings = _Pings(pings.ts[order], pings.lat[order], pings.lon[order], pings.user[order], pings.names)
    return _chunked(pings, params, zones, chunk_s, progress)


def _chunked(pings: _Pings, params: CrossingParams, zones: SensitiveZones | None, chunk_s: float,
             progress: Progress | None) -> Iterator[pd.DataFrame]:
    n = len(pings.ts)
    if n == 0:
        yield _report(pings, params, zones).frame
        return
    ts = pings.ts
    slices = crowd_slice(ts, params)  # non-decreasing, as ts
    per_chunk = max(1, math.ceil(chunk_s / slice_s(params)))
    chunk = np.floor_divide(slices, per_chunk)
    starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
    ends = np.r_[starts[1:], n]
    # Partners of a chunk's first ping are at most window_s older; the margin covers the rounding of
    # ts - window_s (the exact test is |ts_p - ts_q| <= window_s): a few ulps; more context costs only time.
    margin = 8 * float(np.spacing(max(1.0, float(np.abs(ts).max()), params.window_s)))
    open_period, reported = None, np.empty(0, np.int64)  # pairs reported in the latest period so far
    yielded = False
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        first = int(np.searchsorted(ts, ts[lo] - params.window_s - margin, side="left"))
        first = int(np.searchsorted(slices, slices[first], side="left"))  # whole slices
        part = _Pings(ts[first:hi], pings.lat[first:hi], pings.lon[first:hi], pings.user[first:hi], pings.names)
        inner = None
        if progress is not None:
            inner = (lambda done, total, lo=lo, hi=hi: progress(lo + (hi - lo) * done // max(1, total), n))
        rows = _report(part, params, zones, inner, own_from=lo - first)
        frame, pair, period = rows.frame, rows.pair, rows.period
        if open_period is not None and len(frame):
            again = (period == open_period) & np.isin(pair, reported)
            if again.any():
                frame, pair, period = frame[~again].reset_index(drop=True), pair[~again], period[~again]
        if len(frame):
            last = period[-1]  # rows are in time order: the latest period, the only one the next chunk can share
            latest = pair[period == last]
            reported = _distinct(np.concatenate([reported, latest]) if last == open_period else latest)
            open_period = last
        if progress is not None:
            progress(hi, n)
        if len(frame):
            yielded = True
            yield frame
    if not yielded:  # one frame in all, as detect_crossings' empty one
        yield frame


def latest_per_pair(crossings: pd.DataFrame) -> pd.DataFrame:
    """Each pair's current record from detect_crossings' rows: its latest period's (its latest row).

    What a reader of the compacted `crossings` topic finally sees per pair, one row per pair,
    sorted by (user_a, user_b).
    """
    if crossings.empty:
        return crossings.reset_index(drop=True)
    latest = crossings.sort_values("ts", kind="stable").groupby(["user_a", "user_b"], sort=True).tail(1)
    return latest.sort_values(["user_a", "user_b"], kind="stable").reset_index(drop=True)


def detect_pairs(
    fixes: pd.DataFrame, params: CrossingParams = CrossingParams(), zones: SensitiveZones | None = None,
    progress: Progress | None = None,
) -> set[tuple[str, str]]:
    """The distinct (user_a, user_b) pairs, a < b, that detect_crossings reports at least once.

    A pair's first crossing is always reported, so the cooldown cannot change this set; skipping it
    (and the places) makes audits of a dense day several times faster.
    """
    pings = _prepare(fixes, params, zones)
    i, j, _ = _Crowds.matching_pairs(pings, params, progress=progress)
    if zones and i.size:
        ok = _outside_zones(pings.lat[i], pings.lon[i], pings.lat[j], pings.lon[j], zones)[2]
        i, j = i[ok], j[ok]
    ui, uj = pings.user[i], pings.user[j]
    codes = _distinct(np.minimum(ui, uj) * np.int64(len(pings.names)) + np.maximum(ui, uj))
    a, b = np.divmod(codes, np.int64(len(pings.names)))
    return set(zip(pings.names[a].tolist(), pings.names[b].tolist()))


