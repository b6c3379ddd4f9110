"""How long a worker takes to rebuild the crossing detectors after a restart (not run in CI).

A worker takes in the simulated city's backlog (--pings, 2 h of event time), then stops (SIGTERM,
offsets committed). A new worker starts; the next --tail pings of the city make every detector
partition handle records again, which first rebuilds it from its resume point by replaying
crossing-cells. The bench reads each partition's rebuild from the new worker's /state/ and prints
records and pings replayed, seconds, and the replay rate next to the first worker's detect-stage
handler time for the whole backlog (its /batches/) in the same run.

Usage (own broker, see bench/RESULTS.md):
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_rebuild.py --pings 100000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scaleout import INTERNAL, backlog, produce_fast  # noqa: E402
from bench_streaming import INPUTS, _vm, free_port, group_lag  # noqa: E402
from streams.settings import Settings  # noqa: E402
from tests.e2e.helpers import wait_group_stable  # noqa: E402


def _get(port: int, page: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}/", timeout=5) as r:
        return json.loads(r.read())


def _wait_no_lag(settings: Settings, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if group_lag(settings, INTERNAL + list(INPUTS)) == 0:
            return time.perf_counter() - t0
        time.sleep(0.25)
    raise SystemExit(f"still lagging after {timeout_s:.0f} s")


def main() -> None:
    from streams.tools.demo import start_worker, stop_worker
    from streams.topics import create_topics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pings", type=int, default=100_000)
    ap.add_argument("--tail", type=int, default=2_000, help="pings sent after the restart")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    print(f"run {run_id}: {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f}, {args.partitions} partitions; "
          "generating the backlog ...", flush=True)
    messages = backlog(args.pings + args.tail, args.seed)
    pings_seen, cut = 0, len(messages)
    for i, (topic, _, _) in enumerate(messages):
        pings_seen += topic == "geo-pings"
        if pings_seen > args.pings:
            cut = i
            break
    head, tail = messages[:cut], messages[cut:]
    settings = Settings(topic_prefix=f"bench-rebuild-{run_id}.", app_id=f"bench-rebuild-{run_id}",
                        partitions=args.partitions)
    create_topics(settings)
    logs = Path(settings.home) / "logs"

    port = free_port()
    first = start_worker(settings, port, logs / f"bench-rebuild-{run_id}-0.log")
    try:
        wait_group_stable(settings, members=1, timeout_s=120)
        time.sleep(2)
        t0 = time.perf_counter()
        asyncio.run(produce_fast(settings, head))
        _wait_no_lag(settings, args.timeout)
        took = time.perf_counter() - t0  # produce + every stage drained
        stats = _get(port, "batches").get(settings.topic("crossing-cells"), {})
        state = _get(port, "state").get("crossing-cells", {})
        time.sleep(3)  # commits and resume points flushed
    finally:
        stop_worker(first)
    live = sum(v["live_pings"] for v in state.values())
    print(f"  first worker: {args.pings:,} pings through every stage in {took:.1f} s; detect stage "
          f"{stats.get('records', 0):,} records in {stats.get('busy_s', 0):.2f} s of handler time; "
          f"{live:,} live pings held at the stop", flush=True)

    port = free_port()
    second = start_worker(settings, port, logs / f"bench-rebuild-{run_id}-1.log")
    try:
        wait_group_stable(settings, members=1, timeout_s=120)
        t1 = time.perf_counter()
        asyncio.run(produce_fast(settings, tail))
        while True:
            state = _get(port, "state").get("crossing-cells", {})
            if len(state) == args.partitions and all(v.get("rebuilt") for v in state.values()):
                break
            if time.perf_counter() - t1 > args.timeout:
                raise SystemExit(f"not every detector partition rebuilt: {state}")
            time.sleep(0.25)
        wall = time.perf_counter() - t1
        hwm = _vm(second.pid, "VmHWM")
        recovered = _get(port, "batches").get("(table recovery)", {})
    finally:
        stop_worker(second)
    rebuilt = [v["rebuilt"] for _, v in sorted(state.items())]
    records, pings = sum(r["records"] for r in rebuilt), sum(r["pings"] for r in rebuilt)
    seconds = sum(r["seconds"] for r in rebuilt)
    print("\n== Rebuild after a restart ==")
    for p, r in zip(sorted(state), rebuilt):
        print(f"partition {p}: offsets {r['from_offset']}..{r['to_offset']}, {r['records']:,} records, "
              f"{r['pings']:,} routed pings replayed in {r['seconds']:.2f} s -> {r['live_pings']:,} live pings")
    print(f"all partitions: {records:,} records / {pings:,} routed pings (one per key a ping went to) replayed "
          f"in {seconds:.2f} s, {pings / seconds if seconds else float('nan'):,.0f} routed pings/s; the first "
          f"worker's detect stage took {stats.get('busy_s', 0):.2f} s of handler time for the whole backlog")
    print(f"{sum(r['live_pings'] for r in rebuilt):,} live pings after the rebuild and the first tail records "
          f"({live:,} held before the stop); from producing the tail to every partition rebuilt: {wall:.1f} s "
          f"(includes the new worker's table recovery: {recovered.get('records', 0):,} changelog records applied in "
          f"bulk in {recovered.get('busy_s', 0):.2f} s); new worker peak RSS {hwm:.0f} MiB")

if __name__ == "__main__":
    main()
