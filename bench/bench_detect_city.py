"""The crossing detectors on the simulated city, called as the worker calls them (not run in CI).

The offline bench (bench_crossings_offline.py) times the detector on a sparse 1M-ping city. The
streaming benches use the dense simulated city (streams.tools.simulator), where each fix meets many live
pings. This replays that city's pings, with no Kafka, the way the worker's stages see them:

  ingest   `route_many` on --batch pings at a time (one input batch), each routed fix sent to
           partition crc32(key) % --partitions, as the ingest stage does;
  detect   per partition, one CellDetector and one local GroupBests (pre-filter); `add_many` on the fixes of
           --per-call input batches at a time (the records one fetch brings), evict every 5,000
           fixes, as the detect stage does.

It prints the detectors' CPU time per fix and per ping (best of --rounds; time.process_time, so other
processes on the machine count only through shared caches and cores: the load average is printed
with it), and how many candidate pairs per ping they pass to the pair stage: the rate
bench_faust_ceiling.py's --candidates-per-ping stands for.

Usage:
    python bench/bench_detect_city.py                       # the 100k-ping city of bench_streaming.py
    python bench/bench_detect_city.py --pings 20000 --per-call 1,2,8
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geo.crossings import CellDetector, CrossingParams, LateFix, route_many  # noqa: E402
from geo.crossings.crowd import GroupBests  # noqa: E402
from schemas.timefmt import parse_ts  # noqa: E402
from streams.tools.simulator import SimulationParams, simulate_city  # noqa: E402

EVICT_EVERY = 5000  # fixes, as streams.stages.detection._detect_columns


def city_pings(pings: int, seed: int) -> list[tuple]:
    """(user, ts, lat, lon, accuracy) of the city bench_streaming.py produces, first `pings` geo-pings."""
    params = SimulationParams(users=max(2, -(-pings // 100) + 2), hours=2.0, seed=seed, start=1_790_000_000.0,
                              malformed_share=0.0)
    out = []
    for topic, _key, value in simulate_city(params):
        if topic != "geo-pings" or value is None:
            continue
        d = orjson.loads(value)
        out.append((d["user_id"], parse_ts(d["ts"]), d["lat"], d["lon"], d.get("accuracy_m")))
        if len(out) >= pings:
            break
    return out


def routed_calls(pings: list[tuple], params: CrossingParams, batch: int, per_call: int,
                 partitions: int) -> dict[int, list[tuple]]:
    """Per detector partition, the add_many calls the worker would make (column tuples + sources)."""
    calls: dict[int, list[tuple]] = {q: [] for q in range(partitions)}
    pending: dict[int, list[tuple]] = {q: [] for q in range(partitions)}
    for i in range(0, len(pings), batch):
        users, ts, lat, lon, acc = zip(*pings[i : i + batch])
        r = route_many(lat, lon, acc, params)
        keys = np.asarray(r.keys, dtype=object)
        homes = keys[r.home][np.cumsum(r.home) - 1]  # each ping's first entry is its home key
        dest = np.asarray([zlib.crc32(k.encode()) % partitions for k in r.keys], dtype=np.int64)
        source = (i // batch) % partitions  # the input partition the batch came from
        for q in range(partitions):
            e = np.flatnonzero(dest == q)
            f = r.fix[e].tolist()
            pending[q].append(([users[j] for j in f], [ts[j] for j in f], [lat[j] for j in f], [lon[j] for j in f],
                               [acc[j] for j in f], homes[e].tolist(), keys[e].tolist(), [source] * len(f)))
            if len(pending[q]) == per_call:
                calls[q].append(tuple([v for part in pending[q] for v in part[c]] for c in range(8)))
                pending[q] = []
    for q, parts in pending.items():
        if parts:
            calls[q].append(tuple([v for part in parts for v in part[c]] for c in range(8)))
    return calls


def replay(calls: dict[int, list[tuple]], params: CrossingParams, partitions: int) -> tuple[float, int, int, int]:
    """CPU seconds in the detectors, fixes, candidate pairs passed on, late fixes."""
    seconds, fixes, candidates, late = 0.0, 0, 0, 0
    for q, part_calls in calls.items():
        detector, local = CellDetector(params, sources=range(partitions)), GroupBests(params)
        since_evict = 0
        for users, ts, lat, lon, acc, homes, keys, sources in part_calls:
            t0 = time.process_time()
            results = detector.add_many(users, ts, lat, lon, acc, homes, keys, sources=sources, cooldown=local)
            since_evict += len(users)
            if since_evict >= EVICT_EVERY:
                since_evict = 0
                detector.evict()
                local.close(detector.watermark)
            seconds += time.process_time() - t0
            fixes += len(users)
            for result in results:
                if isinstance(result, LateFix):
                    late += 1
                else:
                    candidates += len(result)
    return seconds, fixes, candidates, late


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pings", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=500, help="pings per input batch")
    ap.add_argument("--per-call", default="2", help="input batches per add_many call; comma-separated for several")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    params = CrossingParams()
    t0 = time.perf_counter()
    pings = city_pings(args.pings, args.seed)
    print(f"simulated city: {len(pings):,} geo-pings ({time.perf_counter() - t0:.1f} s)")
    for per_call in (int(x) for x in args.per_call.split(",")):
        calls = routed_calls(pings, params, args.batch, per_call, args.partitions)
        load_before = os.getloadavg()[0]
        runs = [replay(calls, params, args.partitions) for _ in range(args.rounds)]
        seconds = min(r[0] for r in runs)
        _, fixes, candidates, late = runs[0]
        n_calls = sum(len(c) for c in calls.values())
        print(f"per call {per_call} input batch(es), {fixes / n_calls:,.0f} fixes per call: "
              f"{fixes:,} fixes ({fixes / len(pings):.2f} per ping), {late} late; "
              f"detectors {1e6 * seconds / fixes:.1f} µs per fix, {1e6 * seconds / len(pings):.1f} µs per ping "
              f"(best of {args.rounds}: {', '.join(f'{r[0]:.2f}' for r in runs)} s); "
              f"candidate pairs to the pair stage {candidates:,} = {candidates / len(pings):.2f} per ping; "
              f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
