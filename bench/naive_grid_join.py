"""Baseline for the offline bench: the naive vectorized numpy grid join (not the detector).

Every ping pair with |dt| <= T, haversine <= D and different users, each unordered pair once:
grid cells of side D (degrees; the longitude side taken at the data's worst latitude), pings sorted
by (cell, time), and per ping a searchsorted time window in its own cell (later pings only) and in
the 4 "forward" neighbour cells (E, NW, N, NE). No cooldown, no places, no zones, no crowd rule.
"""

from __future__ import annotations

import math

import numpy as np

from geo.distance import EARTH_RADIUS_M, haversine_m


def naive_grid_join(ts, lat, lon, user, distance_m: float, window_s: float, chunk: int = 1 << 17):
    """All matching ping pairs (i, j, metres) of the arrays, i != j, each unordered pair once."""
    n = len(ts)
    side = math.degrees(distance_m / EARTH_RADIUS_M) * (1 + 1e-6)
    side_lon = side / max(1e-9, math.cos(math.radians(min(89.9, float(np.abs(lat).max())))))
    cy = np.floor((lat - lat.min()) / side).astype(np.int64)
    cx = np.floor((lon - lon.min()) / side_lon).astype(np.int64)
    width = int(cx.max()) + 3
    cell = (cy + 1) * width + cx + 1  # room for the -1 neighbours
    t_order = np.argsort(ts, kind="stable")
    rank = np.empty(n, np.int64)
    rank[t_order] = np.arange(n)
    sorted_ts = ts[t_order]
    big = np.int64(n + 1)
    order = np.argsort(cell * big + rank)
    skey = cell[order] * big + rank[order]
    r_lo = np.searchsorted(sorted_ts, sorted_ts - window_s, side="left")[rank[order]]
    r_hi = np.searchsorted(sorted_ts, sorted_ts + window_s, side="right")[rank[order]]
    s_ts, s_lat, s_lon, s_user, s_cell = ts[order], lat[order], lon[order], user[order], cell[order]
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, chunk):
        src = np.arange(start, min(n, start + chunk))
        parts = [(src, src + 1, np.searchsorted(skey, s_cell[src] * big + r_hi[src]))]  # own cell, later only
        for off in (1, width - 1, width, width + 1):  # E, NW, N, NE
            base = (s_cell[src] + off) * big
            parts.append((src, np.searchsorted(skey, base + r_lo[src]), np.searchsorted(skey, base + r_hi[src])))
        for s, lo, hi in parts:
            cnt = np.maximum(hi - lo, 0)
            i = np.repeat(s, cnt)
            j = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
            keep = (s_user[i] != s_user[j]) & (np.abs(s_ts[i] - s_ts[j]) <= window_s)
            i, j = i[keep], j[keep]
            d = haversine_m(s_lat[i], s_lon[i], s_lat[j], s_lon[j])
            keep = d <= distance_m
            out_i.append(order[i[keep]])
            out_j.append(order[j[keep]])
            out_d.append(d[keep])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
