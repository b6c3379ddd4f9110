"""Where a fix goes in the stream: its home partition key and the greater keys it may cross a fix of.

Keys are spatial cells of side partition_cell_m in latitude bands with per-band longitude counts
(poles and the antimeridian need no special case). `route(fix)` gives the fix's home key and every
greater key whose cell is within distance_m of it; a CellDetector at key K emits home-home and
home-guest pairs only, so a pair is emitted exactly once, at the greater of its two home keys.
`route_many` does the same for a batch with numpy, with route()'s arithmetic operation for operation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geo.crossings.model import _DEG, _MARGIN, CrossingParams, Fix, is_usable
from geo.distance import EARTH_RADIUS_M


def _route_band_geometry(params: CrossingParams):
    h = params.partition_cell_m / EARTH_RADIUS_M / _DEG
    nbands = int(180.0 / h) + 1
    return h, nbands


@functools.lru_cache(maxsize=65536)
def _route_n_lon(band: int, h: float, params: CrossingParams) -> int:
    lat_lo, lat_hi = -90.0 + band * h, min(90.0, -90.0 + (band + 1) * h)
    worst = min(90.0, max(abs(lat_lo), abs(lat_hi)))
    circ = 2 * math.pi * EARTH_RADIUS_M * math.cos(worst * _DEG)
    return max(1, int(circ / params.partition_cell_m))


def route(fix: Fix, params: CrossingParams = CrossingParams()) -> list[tuple[str, bool]]:
    """Partition keys a fix must be sent to, home key first: [(key, is_home), ...]."""
    if not (-90.0 <= fix.lat <= 90.0):
        raise ValueError(f"lat={fix.lat!r} is outside [-90, 90]")
    if not (-180.0 <= fix.lon <= 180.0):
        raise ValueError(f"lon={fix.lon!r} is outside [-180, 180]")
    if not is_usable(fix.accuracy_m, params):
        return []  # never used for crossings
    h, nbands = _route_band_geometry(params)

    def cell(b: int, lon: float) -> int:
        n = _route_n_lon(b, h, params)
        return min(int(((lon + 180.0) % 360.0) * n / 360.0), n - 1)

    home_b = min(int((fix.lat + 90.0) / h), nbands - 1)
    home = f"{home_b}:{cell(home_b, fix.lon)}"
    delta = params.distance_m / EARTH_RADIUS_M
    dlat = math.degrees(delta) * (1 + _MARGIN) + 1e-9
    b_lo = max(0, int((fix.lat - dlat + 90.0) / h))
    b_hi = min(nbands - 1, int((fix.lat + dlat + 90.0) / h))
    worst = min(90.0, abs(fix.lat) + dlat)
    c = math.cos(worst * _DEG)
    ratio = math.sin(delta / 2) / c if c > 0 else math.inf
    dlon = math.degrees(2 * math.asin(ratio)) * (1 + _MARGIN) + 1e-9 if ratio < 1 else 360.0
    keys = {home}
    for b in range(b_lo, b_hi + 1):
        n = _route_n_lon(b, h, params)
        if 2 * dlon >= 360.0:
            ks = range(n)
        else:
            x = (fix.lon + 180.0) % 360.0
            k_lo = math.floor((x - dlon) * n / 360.0)
            k_hi = math.floor((x + dlon) * n / 360.0)
            ks = range(n) if k_hi - k_lo + 1 >= n else (k % n for k in range(k_lo, k_hi + 1))
        for k in ks:
            keys.add(f"{b}:{k}")
    # A pair is emitted at the greater of its two home keys, so guests only go to greater keys.
    return [(home, True)] + [(k, False) for k in sorted(keys) if k > home]


@dataclass(frozen=True)
class Routes:
    """Where a batch of fixes goes: entry j sends fix `fix[j]` to partition key `keys[j]`.

    Entries are grouped by fix in input order, each fix's home key first (`home[j]` True), then
    its guest keys in increasing order: for every fix, exactly the list route() gives.
    """

    fix: np.ndarray  # int64, index of the fix in the batch
    keys: list[str]
    home: np.ndarray  # bool


_FAST_BANDS, _FAST_CELLS = 2, 3  # the vectorized path covers fixes needing at most 2 bands x 3 cells


@functools.lru_cache(maxsize=1 << 18)
def _key_name(code: int) -> str:
    return f"{code >> 32}:{code & 0xFFFFFFFF}"


def route_many(lat: Sequence[float], lon: Sequence[float], accuracy: Sequence[float | None] | None = None,
               params: CrossingParams = CrossingParams()) -> Routes:
    """route() for a batch of fixes, with numpy: same keys, same order, ~10x faster per fix.

    The arithmetic is route()'s, operation for operation (trigonometry through `math`, so that
    rounding is the same); fixes that need more than 2 latitude bands or 3 cells per band (near
    the poles, or distance_m close to partition_cell_m) go through route() itself.
    """
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    for name, v, lim in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        bad = np.flatnonzero(~((v >= -lim) & (v <= lim)))
        if bad.size:
            raise ValueError(f"{name}={float(v[bad[0]])!r} is outside [{-lim:.0f}, {lim:.0f}]")
    usable = np.ones(lat.size, dtype=bool) if accuracy is None else is_usable(accuracy, params).reshape(-1)
    idx = np.flatnonzero(usable)
    la, lo = lat[idx], lon[idx]
    h, nbands = _route_band_geometry(params)
    delta = params.distance_m / EARTH_RADIUS_M
    dlat = math.degrees(delta) * (1 + _MARGIN) + 1e-9
    home_b = np.minimum(((la + 90.0) / h).astype(np.int64), nbands - 1)
    b_lo = np.maximum(0, ((la - dlat + 90.0) / h).astype(np.int64))
    b_hi = np.minimum(nbands - 1, ((la + dlat + 90.0) / h).astype(np.int64))
    bands = np.unique(np.concatenate([home_b, b_lo, np.minimum(b_lo + 1, b_hi)]))
    n_of = np.asarray([_route_n_lon(int(b), h, params) for b in bands.tolist()], dtype=np.int64)

    def n_lon(b: np.ndarray) -> np.ndarray:
        return n_of[np.searchsorted(bands, b)]

    x = np.mod(lo + 180.0, 360.0)
    n_home = n_lon(home_b)
    home_code = (home_b << 32) | np.minimum((x * n_home / 360.0).astype(np.int64), n_home - 1)
    half = math.sin(delta / 2)
    dlon = np.asarray([math.degrees(2 * math.asin(r)) * (1 + _MARGIN) + 1e-9 if r < 1 else 360.0
                       for r in (half / c if c > 0 else math.inf
                                 for c in map(math.cos, (np.minimum(90.0, np.abs(la) + dlat) * _DEG).tolist()))])
    fast = (b_hi - b_lo < _FAST_BANDS) & (2 * dlon < 360.0)
    cand = np.full((idx.size, _FAST_BANDS * _FAST_CELLS), -1, dtype=np.int64)
    for j in range(_FAST_BANDS):
        b = np.minimum(b_lo + j, b_hi)  # a band past b_hi repeats b_hi (duplicates are dropped below)
        n = n_lon(b)
        k_lo = np.floor((x - dlon) * n / 360.0).astype(np.int64)
        k_hi = np.floor((x + dlon) * n / 360.0).astype(np.int64)
        fast &= (k_hi - k_lo < _FAST_CELLS) & (k_hi - k_lo + 1 < n)
        for t in range(_FAST_CELLS):
            cand[:, j * _FAST_CELLS + t] = (b << 32) | np.mod(np.minimum(k_lo + t, k_hi), n)
    # Order keys by their names (route() compares strings): rank the batch's distinct codes.
    codes, inverse = np.unique(np.concatenate([home_code, cand.reshape(-1)]), return_inverse=True)
    names = [_key_name(c) for c in codes.tolist()]
    rank_of = np.empty(len(names), dtype=np.int64)
    rank_of[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    ranks = rank_of[inverse]
    home_rank, cand_rank = ranks[: idx.size], ranks[idx.size:].reshape(cand.shape)
    guests = np.where(cand_rank > home_rank[:, None], cand_rank, -1)
    guests.sort(axis=1)
    guests[:, 1:][guests[:, 1:] == guests[:, :-1]] = -1  # the same key twice
    table = np.concatenate([home_rank[:, None], guests], axis=1)[fast]
    keep = table >= 0
    fix = np.repeat(idx[fast], keep.sum(axis=1))
    by_rank = np.asarray(names, dtype=object)[np.argsort(rank_of)]
    keys = by_rank[table[keep]].tolist()
    home = np.zeros(table.shape, dtype=bool)
    home[:, 0] = True
    home = home[keep]
    slow = idx[~fast]
    if slow.size:  # rare: route() one by one, merged back in fix order
        extra = [(i, key, is_home) for i in slow.tolist()
                 for key, is_home in route(Fix("", 0.0, float(lat[i]), float(lon[i])), params)]
        order = np.argsort(np.concatenate([fix, np.asarray([e[0] for e in extra], dtype=np.int64)]), kind="stable")
        merged = keys + [e[1] for e in extra]
        keys = [merged[o] for o in order.tolist()]
        home = np.concatenate([home, np.asarray([e[2] for e in extra], dtype=bool)])[order]
        fix = np.concatenate([fix, np.asarray([e[0] for e in extra], dtype=np.int64)])[order]
    return Routes(fix, keys, home)

