"""Brute-force reference for crossings: the definition, literally, in O(n^2), with the crowd rule
(geo.crossings.crowd) written out again: every ping routed with route(), people counted per unit."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geo.crossings import CrossingParams
from geo.distance import haversine_m, midpoint
from geo.zones import SensitiveZones


def _not_crowd_pair(df: pd.DataFrame, params: CrossingParams, zones: SensitiveZones | None):
    """ok(i, k): whether the matching ping pair of rows i and k is not a crowd pair (crowd rule)."""
    import math

    from geo.crossings import Fix, route

    if params.crowd_users <= 0:
        return lambda i, k: True
    step = max(float(params.window_s), 1.0)
    users = df["user_id"].astype(str).tolist()
    ts = [float(t) for t in df["ts"]]
    lat, lon = [float(x) for x in df["lat"]], [float(x) for x in df["lon"]]
    acc = (pd.to_numeric(df["accuracy_m"], errors="coerce").tolist() if "accuracy_m" in df.columns
           else [math.nan] * len(df))
    home: list[str | None] = []
    people: dict[tuple[str, int], set[str]] = {}
    for i in range(len(df)):
        usable = not acc[i] > params.max_accuracy_m and not (zones and zones.contains(lat[i], lon[i]))
        keys = route(Fix(users[i], ts[i], lat[i], lon[i]), params) if usable else []
        home.append(keys[0][0] if keys else None)
        for key, _ in keys:
            people.setdefault((key, math.floor(ts[i] / step)), set()).add(users[i])
    crowds = {unit for unit, who in people.items() if len(who) > params.crowd_users}

    def ok(i: int, k: int) -> bool:
        judged_at = max(home[i], home[k])
        return ((judged_at, math.floor(ts[i] / step)) not in crowds
                and (judged_at, math.floor(ts[k] / step)) not in crowds)

    return ok


def brute_force_pairs(
    df: pd.DataFrame, params: CrossingParams = CrossingParams(), zones: SensitiveZones | None = None
) -> set[tuple[str, str]]:
    """Distinct (user_a, user_b) pairs, user_a < user_b, with at least one reportable crossing."""
    users = df["user_id"].astype(str).to_numpy()
    ts = np.asarray(df["ts"], dtype=np.float64)
    lat = np.asarray(df["lat"], dtype=np.float64)
    lon = np.asarray(df["lon"], dtype=np.float64)
    usable = np.ones(len(df), dtype=bool)
    if "accuracy_m" in df.columns:
        acc = pd.to_numeric(df["accuracy_m"], errors="coerce").to_numpy(dtype=np.float64)
        usable &= ~(acc > params.max_accuracy_m)  # unknown accuracy (NaN) is usable
    if zones:
        usable &= ~zones.contains(lat, lon)
    pairs: set[tuple[str, str]] = set()
    not_crowd = _not_crowd_pair(df, params, zones)
    for i in range(len(df)):
        if not usable[i]:
            continue
        j = np.arange(i + 1, len(df))
        j = j[usable[j] & (users[j] != users[i])]
        j = j[np.abs(ts[i] - ts[j]) <= params.window_s]
        if j.size == 0:
            continue
        j = j[haversine_m(lat[i], lon[i], lat[j], lon[j]) <= params.distance_m]
        if j.size and zones:
            mlat, mlon = midpoint(lat[i], lon[i], lat[j], lon[j])
            j = j[~zones.contains(mlat, mlon)]
        for k in j:
            if not not_crowd(i, int(k)):
                continue
            a, b = users[i], users[k]
            pairs.add((a, b) if a < b else (b, a))
    return pairs


def brute_force_crossings(
    df: pd.DataFrame, params: CrossingParams = CrossingParams(), zones: SensitiveZones | None = None
) -> dict[tuple[str, str, float], tuple[float, str, str]]:
    """The reported crossing of every (user_a, user_b, cooldown period): {(a, b, period): (ts, place, band)}.

    The definition literally: every pair of pings, the crossing test, and per pair and period the
    first in (ts, distance, place, band) order (earliest in event time, then nearest, then place,
    then band), written here without the batch search's or the streaming stages' code.
    """
    from geo.crossings.model import distance_band, place_of

    users = df["user_id"].astype(str).to_numpy()
    ts = np.asarray(df["ts"], dtype=np.float64)
    lat = np.asarray(df["lat"], dtype=np.float64)
    lon = np.asarray(df["lon"], dtype=np.float64)
    acc = (pd.to_numeric(df["accuracy_m"], errors="coerce").to_numpy(dtype=np.float64) if "accuracy_m" in df.columns
           else np.full(len(df), np.nan))
    best: dict[tuple[str, str, float], tuple[float, float, str, str]] = {}
    not_crowd = _not_crowd_pair(df, params, zones)
    for i in range(len(df)):
        for k in range(i + 1, len(df)):
            if users[i] == users[k] or acc[i] > params.max_accuracy_m or acc[k] > params.max_accuracy_m:
                continue
            if abs(ts[i] - ts[k]) > params.window_s:
                continue
            d = float(haversine_m(lat[i], lon[i], lat[k], lon[k]))
            if d > params.distance_m:
                continue
            mlat, mlon = midpoint(lat[i], lon[i], lat[k], lon[k])
            if zones and (zones.contains(lat[i], lon[i]) or zones.contains(lat[k], lon[k]) or zones.contains(mlat, mlon)):
                continue
            if not not_crowd(i, k):
                continue
            t = float(max(ts[i], ts[k]))
            period = float(t // params.cooldown_s) if params.cooldown_s else t
            a, b = sorted((users[i], users[k]))
            record = (t, d, place_of(mlat, mlon, params), distance_band(d, params))
            key = (a, b, period)
            if key not in best or record < best[key]:
                best[key] = record
    return {key: (t, place, band) for key, (t, _, place, band) in best.items()}
