"""Brute-force reference for crossings: the definition, literally, in O(n^2)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geo.crossings import CrossingParams
from geo.distance import haversine_m, midpoint
from geo.zones import SensitiveZones


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
            a, b = users[i], users[k]
            pairs.add((a, b) if a < b else (b, a))
    return pairs
