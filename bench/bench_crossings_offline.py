"""Offline benchmark of geo.crossings.detect_crossings (not run in CI).

Usage:
    python bench/bench_crossings_offline.py                       # 1M pings, 50k users
    python bench/bench_crossings_offline.py --pings 100000 --users 5000 --quick
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, also for any BLAS/sklearn code
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geo.crossings import CellDetector, CrossingParams, Fix, PairCooldown, detect_crossings, route, route_many  # noqa: E402
from geo.distance import EARTH_RADIUS_M, haversine_m  # noqa: E402
from geo.oracle import brute_force_pairs  # noqa: E402

CITY_LAT, CITY_LON = 48.8566, 2.3522


def generate_city(pings: int, users: int, side_km: float = 15.0, hours: float = 24.0, seed: int = 7) -> pd.DataFrame:
    """Synthetic pings: users around a home, a share of pings at shared hotspots, over `hours`."""
    rng = np.random.default_rng(seed)
    m_lat = 1.0 / (EARTH_RADIUS_M * math.pi / 180.0)
    m_lon = m_lat / math.cos(math.radians(CITY_LAT))
    half = side_km * 500.0
    home_x = rng.uniform(-half, half, users)
    home_y = rng.uniform(-half, half, users)
    n_hot = max(10, int(400 * side_km * side_km / 225.0))
    hot_x, hot_y = rng.uniform(-half, half, n_hot), rng.uniform(-half, half, n_hot)
    u = rng.integers(0, users, pings)
    at_hot = rng.random(pings) < 0.15
    h = rng.integers(0, n_hot, pings)
    x = np.where(at_hot, hot_x[h] + rng.normal(0, 120, pings), home_x[u] + rng.normal(0, 600, pings))
    y = np.where(at_hot, hot_y[h] + rng.normal(0, 120, pings), home_y[u] + rng.normal(0, 600, pings))
    x, y = np.clip(x, -half, half), np.clip(y, -half, half)
    ts = 1_700_000_000.0 + np.sort(rng.uniform(0, hours * 3600.0, pings)).round(3)
    acc = np.where(rng.random(pings) < 0.05, 250.0, rng.uniform(3, 60, pings))
    return pd.DataFrame(
        {
            "user_id": np.char.add("user-", u.astype(str)).astype(object),
            "ts": ts,
            "lat": CITY_LAT + y * m_lat,
            "lon": CITY_LON + x * m_lon,
            "accuracy_m": acc,
        }
    )


def timed(fn, *args, repeat: int = 1):
    """Best CPU time (seconds on one core; the host may be shared) and the result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn(*args)
        best = min(best, time.process_time() - t0)
    return best, out


def balltree_pairs(df: pd.DataFrame, params: CrossingParams) -> set[tuple[str, str]]:
    """Baseline: sklearn BallTree (haversine) radius query, then the time filter."""
    from sklearn.neighbors import BallTree

    df = df[~(df["accuracy_m"] > params.max_accuracy_m)]
    X = np.radians(df[["lat", "lon"]].to_numpy())
    tree = BallTree(X, metric="haversine")
    ind = tree.query_radius(X, r=params.distance_m / EARTH_RADIUS_M)
    ts, users = df["ts"].to_numpy(), df["user_id"].to_numpy()
    i = np.repeat(np.arange(len(df)), [len(a) for a in ind])
    j = np.concatenate(ind) if len(ind) else np.empty(0, int)
    keep = (i < j) & (users[i] != users[j]) & (np.abs(ts[i] - ts[j]) <= params.window_s)
    i, j = i[keep], j[keep]
    keep = haversine_m(df["lat"].to_numpy()[i], df["lon"].to_numpy()[i], df["lat"].to_numpy()[j], df["lon"].to_numpy()[j]) <= params.distance_m
    a, b = users[i[keep]], users[j[keep]]
    return set(zip(np.minimum(a, b), np.maximum(a, b)))


def stream_memory(df: pd.DataFrame, params: CrossingParams, limit: int, batch: int = 500) -> dict:
    """The first `limit` pings through route() and one CellDetector: memory per live ping and speed.

    Timed separately (CPU seconds): route() per ping; route_many() on `batch` pings at a time, as
    the worker's ingest does; add() one fix at a time; add_many() on the fixes of `batch` pings at
    a time with a PairCooldown, as the worker's detect stage does.
    """
    sub = df.iloc[:limit]
    lat, lon = sub["lat"].to_numpy(), sub["lon"].to_numpy()
    acc = [None if pd.isna(a) else float(a) for a in sub["accuracy_m"]]
    t0 = time.process_time()
    for i in range(0, limit, batch):
        route_many(lat[i : i + batch], lon[i : i + batch], acc[i : i + batch], params)
    t_route_many = time.process_time() - t0
    t0 = time.process_time()
    rows = []
    for row in sub.itertuples(index=False):
        acc = None if pd.isna(row.accuracy_m) else float(row.accuracy_m)
        keys = route(Fix(row.user_id, float(row.ts), float(row.lat), float(row.lon), acc), params)
        rows.append([(row.user_id, float(row.ts), float(row.lat), float(row.lon), acc, keys[0][0], key)
                     for key, _ in keys])
    t_route = time.process_time() - t0
    fixes = [f for per_ping in rows for f in per_ping]
    det = CellDetector(params)
    t0 = time.process_time()
    for user, ts, lat, lon, acc, home, key in fixes:
        det.add(Fix(user, ts, lat, lon, acc), home, key)
    t_add = time.process_time() - t0
    det.evict()
    many, cooldown = CellDetector(params), PairCooldown(params)
    t0 = time.process_time()
    for i in range(0, len(rows), batch):
        part = [f for per_ping in rows[i : i + batch] for f in per_ping]
        if part:
            many.add_many(*zip(*part), cooldown=cooldown)
    t_many = time.process_time() - t0
    return {"bytes_per_live": det.memory_bytes() / max(1, det.live_pings), "live": det.live_pings,
            "fixes": len(fixes), "route_pps": limit / t_route, "route_many_pps": limit / t_route_many,
            "add_fps": len(fixes) / t_add,
            "add_many_fps": len(fixes) / t_many}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--hours", type=float, default=168.0, help="time span of the pings (density knob)")
    ap.add_argument("--baseline-pings", type=int, default=200_000, help="subset size for the BallTree baseline")
    ap.add_argument("--brute-pings", type=int, default=5_000, help="subset size for the brute-force oracle")
    ap.add_argument("--stream-pings", type=int, default=100_000, help="pings fed to the streaming detector")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the scaling series")
    args = ap.parse_args(argv)
    params = CrossingParams()

    print(f"# python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}; times are CPU seconds")
    df = generate_city(args.pings, args.users, hours=args.hours)
    print(f"data: {len(df):,} pings, {df.user_id.nunique():,} users, 15x15 km, {args.hours:g} h")

    tracemalloc.start()
    t, out = timed(detect_crossings, df, params)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t, out = timed(detect_crossings, df, params, repeat=args.repeat)
    rate = len(df) / t
    print(f"detect_crossings: {t:.3f} s, {rate:,.0f} pings/s, {len(out):,} reported crossings, "
          f"{len(set(zip(out.user_a, out.user_b))):,} distinct pairs, peak traced alloc {peak / 2**20:.0f} MiB")

    sub = df.iloc[: args.baseline_pings]
    tb, base = timed(balltree_pairs, sub, params)
    td, mine = timed(detect_crossings, sub, params)
    same = base == set(zip(mine.user_a, mine.user_b))
    print(f"baseline BallTree on {len(sub):,} pings: {tb:.3f} s ({len(sub) / tb:,.0f} pings/s); "
          f"detect_crossings {td:.3f} s ({len(sub) / td:,.0f} pings/s); speedup x{tb / td:.1f}; same pairs: {same}")

    small = df.iloc[: args.brute_pings]
    tbf, bf = timed(brute_force_pairs, small, params)
    tds, ds = timed(detect_crossings, small, params)
    print(f"brute force on {len(small):,} pings: {tbf:.3f} s; detect_crossings {tds:.4f} s; "
          f"speedup x{tbf / tds:.0f}; same pairs: {bf == set(zip(ds.user_a, ds.user_b))}")

    for hours in sorted({args.hours, 24.0}):
        dense = df if hours == args.hours else generate_city(args.pings, args.users, hours=hours)
        m = stream_memory(dense, params, args.stream_pings)
        print(f"CellDetector at the {hours:g} h density, first {args.stream_pings:,} pings ({m['fixes']:,} routed fixes): "
              f"{m['bytes_per_live']:.0f} bytes per live ping ({m['live']:,} live pings); route {m['route_pps']:,.0f} pings/s, "
              f"route_many (500-ping batches) {m['route_many_pps']:,.0f} pings/s (x{m['route_many_pps'] / m['route_pps']:.1f}); "
              f"add one by one {m['add_fps']:,.0f} fixes/s; add_many (500-ping batches + cooldown, as the worker) "
              f"{m['add_many_fps']:,.0f} fixes/s (x{m['add_many_fps'] / m['add_fps']:.1f})")

    if not args.quick:
        print("scaling, users x10 at fixed density (pings/user and pings/km2/h fixed):")
        base_users = max(1000, args.users // 10)
        for mult in (1, 10):
            users = base_users * mult
            pings = args.pings // 10 * mult
            side = 15.0 * math.sqrt(mult / 10.0)
            d = generate_city(pings, users, side_km=side, hours=args.hours, seed=11)
            tt, o = timed(detect_crossings, d, params, repeat=args.repeat)
            print(f"  users={users:>7,} pings={pings:>9,} side={side:5.1f} km: {tt:.3f} s, {pings / tt:,.0f} pings/s, {len(o):,} crossings")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
