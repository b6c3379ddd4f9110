"""What a crowd costs in-process, per 300 s slice, without Kafka (not run in CI; see bench_crowd.py).

bench_crowd.py runs a crowd through a worker; this replays the same crowd (same geometry: N users
within --radius m of the Louvre, a ping every 30 s each) through the core objects the worker's
crossing stages call, in the worker's order, and times each step:

  detector    routing (route_many), then CellDetector.add_many with the partition's GroupBests, in
              input batches of --batch pings (the worker's detect stage gets ~80 pings per call at
              10x real time, ~500+ when it runs flat out)
  pair stage  PairCooldown.offer_group for each candidate and withdraw_unit for each withdrawal
              (streams/stages/pairs.py's core calls), and the records the stage would then publish
              (crossing_bytes x 2 per changed pair, tombstones x 2 per pair withdrawn, and one
              pair-table value per change), built but not sent

Usage:
    .venv/bin/python bench/crowd_burst.py --sizes 500,2000,5000,20000 --batch 80,500
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from bench_crowd import CROWD_SPOT, crowd_pings  # noqa: E402


def replay(n: int, batch: int, minutes: float, args) -> dict:
    import orjson

    from geo.crossings import CellDetector, CrossingParams, LateFix, PairCooldown
    from geo.crossings.crowd import GroupBests
    from geo.crossings.routing import route_many
    from schemas.outputs import crossing_bytes, crossing_key
    from schemas.timefmt import format_ts

    params = CrossingParams()
    start = (time.time() // 3600) * 3600 - 7200  # on a slice boundary
    pings = [(ts, orjson.loads(v)) for ts, _, _, v, _ in crowd_pings(n, CROWD_SPOT, args.radius, start, minutes,
                                                                      args.interval, args.seed + n)]
    det = CellDetector(params)
    bests = GroupBests(params)
    pairs = PairCooldown(params)
    t_route = t_det = t_pair = t_rec = 0.0
    candidates = withdrawals = published = tombstones = released = idle_withdrawals = 0
    keys_seen: set[str] = set()
    clock = time.time()
    for i in range(0, len(pings), batch):
        chunk = pings[i:i + batch]
        t0 = time.perf_counter()
        lat = [d["lat"] for _, d in chunk]
        lon = [d["lon"] for _, d in chunk]
        r = route_many(lat, lon, [10.0] * len(chunk), params)
        keys = np.asarray(r.keys, dtype=object)
        homes = keys[r.home][np.cumsum(r.home) - 1]
        idx = r.fix.tolist()
        users = [chunk[j][1]["user_id"] for j in idx]
        ts = [chunk[j][0] for j in idx]
        t1 = time.perf_counter()
        results = det.add_many(users, ts, [lat[j] for j in idx], [lon[j] for j in idx], [10.0] * len(idx),
                               homes.tolist(), keys.tolist(), cooldown=bests)
        withdrawn = list(bests.withdrawn)
        bests.withdrawn.clear()
        found = [c for res in results if not isinstance(res, LateFix) for c in res]
        released += len(bests.released)
        found += bests.released  # held back where a crowd just was, sent once their slices are over
        bests.released = []
        if (i // batch) % 50 == 0:
            det.evict()
            bests.close(det.watermark)
        t2 = time.perf_counter()
        keys_seen.update(r.keys)
        candidates += len(found)
        withdrawals += len(withdrawn)
        changed = []
        for a, b, key, s in withdrawn:
            o = pairs.withdraw_unit(a, b, key, s, clock)
            if o.changed:
                changed.append((a, b, o.record))
            else:
                idle_withdrawals += 1  # nothing of the pair was ever sent from that unit
        for c in found:
            o = pairs.offer_group(c.user_a, c.user_b, c.group[0], c.group[1], c.group[2], c.ts, c.distance_m, c.place,
                                  c.distance_band, 0, clock)
            if o.changed:
                changed.append((c.user_a, c.user_b, o.record))
        t3 = time.perf_counter()
        now = format_ts(clock)
        out = []
        for a, b, record in changed:
            if record is None:
                out.append((crossing_key(a, b), None))
                out.append((crossing_key(b, a), None))
                tombstones += 2
            else:
                at = format_ts(record[0])
                for u, v in ((a, b), (b, a)):
                    out.append((crossing_key(u, v), crossing_bytes(u, v, at, record[2], 8, record[3], now)))
                published += 2
            out.append((f"0|{a}|{b}".encode(), orjson.dumps([record, pairs.group_entries(a, b)] if record else None)))
        t4 = time.perf_counter()
        t_route += t1 - t0
        t_det += t2 - t1
        t_pair += t3 - t2
        t_rec += t4 - t3
    slices = minutes * 60 / max(1.0, params.window_s)
    return {"n": n, "batch": batch, "pings": len(pings), "keys": len(keys_seen), "crowds": det.crowds_seen,
            "route_s": t_route, "detect_s": t_det, "pairs_s": t_pair, "records_s": t_rec,
            "candidates": candidates, "withdrawals": withdrawals, "released": released, "idle": idle_withdrawals, "published": published, "tombstones": tombstones,
            "per_slice": (published + tombstones) / slices}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="500,2000,5000")
    ap.add_argument("--batch", default="80,500", help="pings per detector call, comma-separated")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--radius", type=float, default=150.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    head = ["N", "pings per call", "pings", "keys (crowds)", "candidates (of them released after a hold)",
            "withdrawal rows (changing nothing)",
            "records + tombstones out", "per slice", "route s", "detector s", "pair core s", "records built s",
            "µs per ping, all"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for n in [int(x) for x in args.sizes.split(",")]:
        for b in [int(x) for x in args.batch.split(",")]:
            r = replay(n, b, args.minutes, args)
            total = r["route_s"] + r["detect_s"] + r["pairs_s"] + r["records_s"]
            print(f"| {n:,} | {b} | {r['pings']:,} | {r['keys']} ({r['crowds']}) | {r['candidates']:,} "
                  f"({r['released']:,}) | {r['withdrawals']:,} ({r['idle']:,}) | {r['published']:,} + {r['tombstones']:,} | {r['per_slice']:,.0f} | "
                  f"{r['route_s']:.2f} | {r['detect_s']:.2f} | {r['pairs_s']:.2f} | {r['records_s']:.2f} | "
                  f"{total / r['pings'] * 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
