"""Throughput of the statistics aggregation (not CI): the pure core, then the same work behind a Kafka consumer.

core   WindowedDistinct.add + closed() + generalize_cells over pre-generated pings (no I/O).
kafka  (issue 4) the same pings as stats-cells messages ({"ts", "cell", "m", "src"}, keyed by the coarse
       res-5 cell, as streams.stages.ingest sends them) produced to a fresh topic, then read back in
       this one process, interleaved over --repeat rounds:
         (a) raw AIOKafkaConsumer consume, beginning -> end (bench_ingest.consume);
         (b) the same loop + json.loads + per-partition WindowedDistinct.add(source=src partition)
             + closed() after every message + generalize_cells per closed window (flush at the end),
             i.e. streams.stages.statistics.aggregate_locations minus Faust (no changelog tables, no sends).
       Prints pings/s of both, the ratio (b)/(a) and the state bytes per open window.

Usage (own broker, see bench/RESULTS.md):
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_stats.py  # core 1M, Kafka first 500k
    python bench/bench_stats.py --no-kafka                                                  # core only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

import h3
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_ingest's Kafka helpers

from anonymizers.kanon import KAnonParams, generalize_cells  # noqa: E402
from anonymizers.pseudonym import Pseudonymizer  # noqa: E402
from anonymizers.windows import WindowedDistinct  # noqa: E402

CLOSE_EVERY = 10_000  # pings between two closed() calls, like a stream shell's timer


def synthetic_pings(n: int, users: int, hours: float, seed: int):
    """Return ts, base cell and pseudonym lists for n pings around Paris (res 9)."""
    rng = np.random.default_rng(seed)
    pool = sorted(h3.grid_disk(h3.latlng_to_cell(48.85, 2.35, 9), 40))
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 0.8  # a few busy cells, a long tail
    home = rng.choice(len(pool), size=users, p=weights / weights.sum())
    who = rng.integers(0, users, size=n)
    roaming = rng.random(n) < 0.2
    cell_idx = np.where(roaming, rng.integers(0, len(pool), size=n), home[who])
    t0 = 1_700_000_000.0
    ts = np.sort(rng.uniform(t0, t0 + hours * 3600, size=n)) + rng.normal(0, 5, size=n)  # slight disorder
    pseudo = Pseudonymizer(b"bench-secret-not-for-production!", rotation_s=86400)
    names = [pseudo.pseudonym(f"user-{u}", t0) for u in range(users)]
    return ts.tolist(), [pool[i] for i in cell_idx], [names[u] for u in who]


def window_bytes(members: dict) -> tuple[int, int]:
    """Return (JSON bytes, approximate in-memory bytes) of one window's members."""
    as_json = len(json.dumps([[k, sorted(v)] for k, v in members.items()]).encode())
    seen: set[int] = set()
    mem = sys.getsizeof(members)
    for key, vals in members.items():
        mem += sys.getsizeof(key) + sys.getsizeof(vals)
        for v in vals:
            if id(v) not in seen:  # a member string is stored once per process, count it once
                seen.add(id(v))
                mem += sys.getsizeof(v)
    return as_json, mem


def run(args: argparse.Namespace, data) -> dict:
    """Feed the pings, close windows as the watermark moves, generalize each closed window."""
    ts, cells, members = data
    params = KAnonParams(k=args.k, base_resolution=9, coarsest_resolution=5)
    w = WindowedDistinct(args.window_s, args.lateness_s)
    t_add = t_gen = t_measure = 0.0
    late = published = 0
    sizes = []

    def publish(closed):
        nonlocal t_gen, t_measure, published
        for window in closed:
            t = time.perf_counter()
            sizes.append((len(window.members), sum(map(len, window.members.values())), *window_bytes(window.members)))
            t_measure += time.perf_counter() - t
            t = time.perf_counter()
            published += len(generalize_cells(window.members, params))
            t_gen += time.perf_counter() - t

    add, closed = w.add, w.closed
    total_start = time.perf_counter()
    for start in range(0, len(ts), CLOSE_EVERY):
        t = time.perf_counter()
        for i in range(start, min(start + CLOSE_EVERY, len(ts))):
            if add(ts[i], cells[i], members[i]) == "late":
                late += 1
        ready = closed()
        t_add += time.perf_counter() - t
        publish(ready)
    t = time.perf_counter()
    ready = w.flush()
    t_add += time.perf_counter() - t
    publish(ready)
    total = time.perf_counter() - total_start - t_measure  # size accounting is not aggregation

    n = len(ts)
    return {
        "pings": n,
        "users": args.users,
        "windows": len(sizes),
        "late": late,
        "published_rows": published,
        "total_s": total,
        "pings_per_s": n / total,
        "add_pings_per_s": n / t_add,
        "generalize_s_per_window": t_gen / max(1, len(sizes)),
        "cells_per_window": float(np.mean([s[0] for s in sizes])),
        "memberships_per_window": float(np.mean([s[1] for s in sizes])),
        "json_bytes_per_window": float(np.mean([s[2] for s in sizes])),
        "mem_bytes_per_window": float(np.mean([s[3] for s in sizes])),
        "max_mem_bytes_per_window": max(s[3] for s in sizes),
    }


# --------------------------------------------------------------------------- Kafka (issue 4)
def stats_cells_messages(ts, cells, members, partitions: int):
    """(key, value) stats-cells messages as streams.stages.ingest._ingest_ping builds them, in ping order."""
    coarse: dict[str, bytes] = {}
    offsets = [0] * partitions
    out = []
    for t, cell, m in zip(ts, cells, members):
        key = coarse.get(cell)
        if key is None:
            key = coarse[cell] = h3.cell_to_parent(cell, 5).encode()
        src = zlib.crc32(m.encode()) % partitions  # the user's geo-pings partition (keyed by user)
        out.append((key, json.dumps({"ts": t, "cell": cell, "m": m, "src": ["geo-pings", src, offsets[src]]},
                                    separators=(",", ":")).encode()))
        offsets[src] += 1
    return out


def make_aggregate(part_of: dict[bytes, int], partitions: int, params: KAnonParams, args, measure: bool):
    """per_message(key, value) doing aggregate_locations' work; finish() flushes; stats; sizes."""
    loads = json.loads
    wds = [WindowedDistinct(args.window_s, args.lateness_s, sources=range(partitions)) for _ in range(partitions)]
    stats = {"late": 0, "windows": 0, "published_rows": 0, "measure_s": 0.0}
    sizes: list[tuple] = []  # (partition, start, cells, memberships, json bytes, mem bytes)

    def publish(p, ready):
        for window in ready:
            if measure:  # size accounting is not aggregation: timed and subtracted
                t = time.perf_counter()
                sizes.append((p, window.start, len(window.members), sum(map(len, window.members.values())),
                              *window_bytes(window.members)))
                stats["measure_s"] += time.perf_counter() - t
            stats["published_rows"] += len(generalize_cells(window.members, params))
            stats["windows"] += 1

    def per_message(key, value):
        body = loads(value)
        if "purge" in body:
            return
        p = part_of[key]
        wd = wds[p]
        if wd.add(body["ts"], body["cell"], body["m"], source=body["src"][1]) == "late":
            stats["late"] += 1
            return
        ready = wd.closed()
        if ready:
            publish(p, ready)

    def finish():
        for p, wd in enumerate(wds):
            publish(p, wd.flush())

    return per_message, finish, stats, sizes


async def run_kafka(args: argparse.Namespace, data) -> dict:
    """Produce the pings as stats-cells messages, then interleave (a) raw consume and (b) aggregation."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.partitioner.default import murmur2

    from bench_ingest import Load, consume, produce
    from streams.settings import Settings
    from streams.topics import topic_specs

    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    settings = Settings(topic_prefix=f"bench-stats-{run_id}.", app_id=f"bench-stats-{run_id}")
    topic, parts = settings.topic("stats-cells"), settings.partitions
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"kafka: bootstrap {settings.bootstrap_servers}, topic {topic} ({parts} partitions), "
        f"load avg {os.getloadavg()[0]:.2f}")

    msgs = stats_cells_messages(*(col[:args.kafka_pings] for col in data), parts)  # same density as the core
    part_of = {k: (murmur2(k) & 0x7FFFFFFF) % parts for k in {k for k, _ in msgs}}  # kafka-python's default
    per_part = [0] * parts
    for k, _ in msgs:
        per_part[part_of[k]] += 1
    spec = next(s for s in topic_specs(settings) if s.name == "stats-cells")
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="bench-stats")
    admin.create_topics([NewTopic(topic, parts, 1, topic_configs=spec.configs())])
    t_prod = produce(settings, topic, msgs)
    mean_value = sum(len(v) for _, v in msgs) / len(msgs)
    n = len(msgs)
    del msgs
    log(f"kafka: produced {n} messages (mean value {mean_value:.0f} B, {len(part_of)} coarse keys, "
        f"per partition {per_part}) in {t_prod:.1f} s")

    params = KAnonParams(k=args.k, base_resolution=9, coarsest_resolution=5)
    raw_runs, agg_runs, sizes, agg_stats = [], [], [], {}
    try:
        for i in range(args.repeat):
            with Load() as la:
                n_a = await consume(settings, topic)
            per_message, finish, st, sz = make_aggregate(part_of, parts, params, args, measure=(i == 0))
            with Load() as lb:
                n_b = await consume(settings, topic, per_message=per_message)
                finish()
            assert n_a == n_b == n, (n_a, n_b, n)
            rate_a, rate_b = n_a / la.wall, n_b / (lb.wall - st["measure_s"])
            raw_runs.append((rate_a, la))
            agg_runs.append((rate_b, lb))
            if i == 0:
                sizes, agg_stats = sz, dict(st)
            log(f"  round {i + 1}: (a) raw consume {rate_a:,.0f} msg/s ({la.describe()})")
            log(f"           (b) consume + aggregate {rate_b:,.0f} pings/s ({lb.describe()}; "
                f"size accounting {st['measure_s']:.2f} s subtracted); {st['windows']} windows, late {st['late']}")
    finally:
        if not args.keep_topic:
            admin.delete_topics([topic])
        admin.close()

    raw = [r for r, _ in raw_runs]
    agg = [r for r, _ in agg_runs]
    raw_med, agg_med = statistics.median(raw), statistics.median(agg)
    by_start: dict[float, list] = {}
    for p, start, c, m, j, mem in sizes:
        acc = by_start.setdefault(start, [0, 0, 0, 0])
        for idx, v in enumerate((c, m, j, mem)):
            acc[idx] += v
    nonempty = [s for s in sizes if s[3]]
    return {
        "topic_partitions": parts,
        "pings": n,
        "mean_value_bytes": round(mean_value, 1),
        "coarse_keys": len(part_of),
        "pings_per_partition": per_part,
        "produce_s": round(t_prod, 1),
        "raw_consume_msgs_per_s": round(raw_med),
        "raw_consume_rounds": [round(r) for r in raw],
        "aggregate_pings_per_s": round(agg_med),
        "aggregate_rounds": [round(r) for r in agg],
        "ratio_aggregate_to_raw": round(agg_med / raw_med, 3),
        "ratio_rounds": [round(b / a, 3) for a, b in zip(raw, agg)],
        "raw_us_per_msg": round(1e6 / raw_med, 2),
        "aggregate_us_per_ping": round(1e6 / agg_med, 2),
        "windows_closed": agg_stats["windows"],
        "published_rows": agg_stats["published_rows"],
        "late": agg_stats["late"],
        "per_partition_window": {
            "count_nonempty": len(nonempty),
            "cells_mean": float(np.mean([s[2] for s in nonempty])),
            "memberships_mean": float(np.mean([s[3] for s in nonempty])),
            "json_bytes_mean": float(np.mean([s[4] for s in nonempty])),
            "mem_bytes_mean": float(np.mean([s[5] for s in nonempty])),
            "mem_bytes_max": max(s[5] for s in nonempty),
        },
        "per_window_all_partitions": {
            "count": len(by_start),
            "cells_mean": float(np.mean([v[0] for v in by_start.values()])),
            "memberships_mean": float(np.mean([v[1] for v in by_start.values()])),
            "json_bytes_mean": float(np.mean([v[2] for v in by_start.values()])),
            "mem_bytes_mean": float(np.mean([v[3] for v in by_start.values()])),
            "mem_bytes_max": max(v[3] for v in by_start.values()),
        },
        "others_cores_mean": round(statistics.mean(l.others_cores for _, l in raw_runs + agg_runs), 2),
    }


def main() -> None:
    """Parse flags, run the core once and (unless --no-kafka) the Kafka comparison, print a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pings", type=int, default=1_000_000, help="pings of the core run")
    p.add_argument("--kafka-pings", type=int, default=500_000,
                   help="the first N of the core's pings (same pings per window) are produced to Kafka")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of (a) and (b)")
    p.add_argument("--no-kafka", action="store_true", help="core only, no broker needed")
    p.add_argument("--keep-topic", action="store_true", help="do not delete the bench topic at the end")
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--hours", type=float, default=6.0)
    p.add_argument("--window-s", type=float, default=3600.0)
    p.add_argument("--lateness-s", type=float, default=300.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = synthetic_pings(args.pings, args.users, args.hours, args.seed)
    result = run(args, data)
    result["python"] = platform.python_version()
    if not args.no_kafka:
        result["kafka"] = asyncio.run(run_kafka(args, data))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
