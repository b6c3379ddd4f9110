"""Offline detection against the naive grid join, and a 20,000-person crowd through the chunked detector (not CI).

Usage:
    python bench/bench_offline_crowd.py                  # everything (each chunked run in a child, for its own peak RSS)
    python bench/bench_offline_crowd.py uniform --repeat 3
    python bench/bench_offline_crowd.py chunked --workload crowd --chunk-s 300
    python bench/bench_offline_crowd.py chunked --workload uniform --output csv

uniform: 1M pings of 50k users, uniform over 10x10 km (Paris) and 24 h, all usable. In one process,
alternating: bench/naive_grid_join.py (every matching ping pair; no cooldown, places, zones or crowd
rule) and geo.crossings.detect_crossings (the output rows, places included); CPU seconds (the host
is shared: CPU time is what one core spent) and wall seconds, best of --repeat. Then the time of
detect_crossings' parts, measured alone, to say where it goes.

chunked: a workload through detect_crossings_chunked, then from a Parquet file through
`crosspaths crossings detect`'s function (detect_crossings_file); wall, CPU, pings/s, peak RSS of
the process (VmHWM). The crowd: 20,000 people within ~150 m, a ping each every 30 s for 25 min
(1M pings; --minutes 50: 2M), default crowd rule (200 people per partition key and 300 s slice).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from geo.crossings import CrossingParams  # noqa: E402
from geo.crossings import search  # noqa: E402
from geo.distance import EARTH_RADIUS_M, midpoint  # noqa: E402
from naive_grid_join import naive_grid_join  # noqa: E402

LAT0, LON0 = 48.8566, 2.3522
T0 = 1_700_000_000.0


def _metres(lat0: float):
    m_lat = 1.0 / (EARTH_RADIUS_M * math.pi / 180.0)
    return m_lat, m_lat / math.cos(math.radians(lat0))


def generate_uniform(pings: int = 1_000_000, users: int = 50_000, side_km: float = 10.0, hours: float = 24.0,
                     seed: int = 3) -> pd.DataFrame:
    """Pings uniform in a square and in time, users drawn uniformly; sorted by time."""
    rng = np.random.default_rng(seed)
    m_lat, m_lon = _metres(LAT0)
    half = side_km * 500.0
    x, y = rng.uniform(-half, half, pings), rng.uniform(-half, half, pings)
    u = rng.integers(0, users, pings)
    return pd.DataFrame({"user_id": np.char.add("user-", u.astype(str)).astype(object),
                         "ts": T0 + np.sort(rng.uniform(0, hours * 3600.0, pings)).round(3),
                         "lat": LAT0 + y * m_lat, "lon": LON0 + x * m_lon})


def generate_crowd(people: int = 20_000, every_s: float = 30.0, minutes: float = 25.0, radius_m: float = 150.0,
                   seed: int = 5) -> pd.DataFrame:
    """Everyone within radius_m of one spot, each pinging every `every_s` (random phase) for `minutes`."""
    rng = np.random.default_rng(seed)
    m_lat, m_lon = _metres(LAT0)
    rounds = int(minutes * 60 / every_s)
    n = people * rounds
    who = np.tile(np.arange(people), rounds)
    ts = T0 + np.repeat(np.arange(rounds) * every_s, people) + rng.uniform(0, every_s, people)[who]
    r, a = radius_m * np.sqrt(rng.random(n)), rng.uniform(0, 2 * math.pi, n)
    return pd.DataFrame({"user_id": np.char.add("fan-", who.astype(str)).astype(object), "ts": ts.round(3),
                         "lat": LAT0 + r * np.sin(a) * m_lat, "lon": LON0 + r * np.cos(a) * m_lon,
                         "accuracy_m": 10.0})


def clocked(fn, *args, **kw):
    """(cpu seconds, wall seconds, result)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kw)
    return time.process_time() - c0, time.perf_counter() - w0, out


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (getrusage's ru_maxrss would include the parent's peak at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def uniform(args) -> None:
    params = CrossingParams()
    df = generate_uniform(args.pings, args.users)
    print(f"uniform: {len(df):,} pings, {df.user_id.nunique():,} users, 10x10 km, 24 h; D={params.distance_m:g} m, "
          f"T={params.window_s:g} s, crowd_users={params.crowd_users}")
    codes = pd.factorize(df.user_id, sort=True)[0]
    cols = (df.ts.to_numpy(), df.lat.to_numpy(), df.lon.to_numpy(), codes)
    naive, mine = [], []
    for _ in range(args.repeat):  # alternating, so that both see the same load
        c, w, (i, _, _) = clocked(naive_grid_join, *cols, params.distance_m, params.window_s)
        naive.append((c, w, len(i)))
        c, w, out = clocked(search.detect_crossings, df, params)
        mine.append((c, w, len(out)))
        print(f"  naive join {naive[-1][0]:.2f} s CPU ({naive[-1][1]:.2f} wall), {naive[-1][2]:,} ping pairs; "
              f"detect_crossings {c:.2f} s CPU ({w:.2f} wall), {len(out):,} rows", flush=True)
    nc, nw = min(x[0] for x in naive), min(x[1] for x in naive)
    dc, dw = min(x[0] for x in mine), min(x[1] for x in mine)
    print(f"best: naive join {nc:.2f} s CPU ({len(df) / nc:,.0f} pings/s), detect_crossings {dc:.2f} s CPU "
          f"({len(df) / dc:,.0f} pings/s); detect_crossings is x{nc / dc:.2f} the naive join's speed "
          f"(wall x{nw / dw:.2f}; target x2)")

    # Where detect_crossings' time goes: its parts, each alone (CPU s).
    c_prep, _, pings = clocked(search._prepare, df, params, None)
    c_crowd, _, _ = clocked(search._Crowds, pings, params)
    c_grid, _, (i, j, d) = clocked(search._matching_pairs, pings, params)
    c_mid, _, (mlat, mlon) = clocked(midpoint, pings.lat[i], pings.lon[i], pings.lat[j], pings.lon[j])
    c_h3, _, _ = clocked(search._place_cells, mlat, mlon, params.place_resolution)
    rest = dc - (c_prep + c_crowd + c_grid + c_mid + c_h3)
    print(f"parts (CPU s, alone): prepare {c_prep:.2f}, crowd rule (route_many + counts) {c_crowd:.2f}, grid search "
          f"{c_grid:.2f} ({len(i):,} matches), midpoints {c_mid:.2f}, H3 places {c_h3:.2f} "
          f"({c_h3 / max(1, len(i)) * 1e6:.2f} us each); the rest (per pair and period, sorting, columns) ~{rest:.2f}")
    floor = c_mid + c_h3
    print(f"ceiling: the places alone (midpoint + one H3 call per row) take {floor:.2f} s = x{nc / floor:.2f} of the "
          f"naive join; with everything else free detect_crossings would be x{nc / floor:.2f}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


def chunked(args) -> None:
    """One workload through detect_crossings_chunked, then from a Parquet file through detect_crossings_file."""
    params = CrossingParams()
    if args.workload == "crowd":
        df = generate_crowd(people=args.people, minutes=args.minutes)
        print(f"crowd: {len(df):,} pings, {df.user_id.nunique():,} people within 150 m, every 30 s, "
              f"{(df.ts.max() - df.ts.min()) / 60:.0f} min; crowd_users={params.crowd_users}; chunk_s={args.chunk_s:g}")
    else:
        df = generate_uniform(args.pings, args.users)
        print(f"uniform, chunked: {len(df):,} pings, 10x10 km, 24 h; chunk_s={args.chunk_s:g}")
    print(f"  after generating: peak RSS {peak_rss_mib():.0f} MiB", flush=True)

    def run():
        return sum(len(f) for f in search.detect_crossings_chunked(df, params, chunk_s=args.chunk_s))

    c, w, rows = clocked(run)
    print(f"  detect_crossings_chunked: {w:.2f} s wall, {c:.2f} s CPU, {len(df) / w:,.0f} pings/s (wall), "
          f"{rows:,} crossings; peak RSS {peak_rss_mib():.0f} MiB", flush=True)
    if args.file:
        from streams.tools.offline import detect_crossings_file

        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "pings.parquet"
            df.assign(ts=(df.ts * 1000).round().astype(np.int64)).to_parquet(src)
            del df
            out = Path(tmp) / f"out.{args.output}"
            c, w, run_ = clocked(detect_crossings_file, src, out, params, chunk_s=args.chunk_s)
            print(f"  file to file (read, check, detect, write {args.output}): {w:.2f} s wall, {c:.2f} s CPU, "
                  f"{run_.rows / w:,.0f} pings/s; {run_.crossings:,} crossings; peak RSS {peak_rss_mib():.0f} MiB")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", nargs="?", choices=["uniform", "chunked", "all"], default="all",
                    help="all: uniform, then chunked for the crowd and for the uniform workload, each in a child process")
    ap.add_argument("--workload", choices=["crowd", "uniform"], default="crowd", help="chunked: which pings")
    ap.add_argument("--pings", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-s", type=float, default=3600.0)
    ap.add_argument("--people", type=int, default=20_000, help="crowd: people")
    ap.add_argument("--minutes", type=float, default=25.0, help="crowd: duration (a ping per person every 30 s)")
    ap.add_argument("--output", choices=["parquet", "csv"], default="parquet", help="chunked: the file run's output")
    ap.add_argument("--no-file", dest="file", action="store_false", help="chunked: skip the file-to-file run")
    args = ap.parse_args(argv)
    print(f"# python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if args.part in ("uniform", "all"):
        uniform(args)
    if args.part == "chunked":
        chunked(args)
    elif args.part == "all":  # children of their own, so that each peak RSS is the run's
        for workload in ("crowd", "uniform"):
            sys.stdout.flush()
            subprocess.run([sys.executable, __file__, "chunked", "--workload", workload, "--chunk-s", str(args.chunk_s),
                            "--people", str(args.people), "--minutes", str(args.minutes), "--pings", str(args.pings),
                            "--users", str(args.users), "--output", args.output] + ([] if args.file else ["--no-file"]),
                           check=True)


if __name__ == "__main__":
    main()
