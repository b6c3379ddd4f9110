"""Scale-out: the same backlog through 1 and through 2 worker processes (not run in CI).

For each worker count (alternating, --rounds times): fresh topics (their own prefix) and consumer
group; the workers start on empty topics and the bench waits until the group is Stable with all of
them (no rebalance during the measurement); then the simulated backlog, generated beforehand in
memory (same seed every time), is produced as fast as kafka-python goes; the clock runs from the
first message produced to no committed lag on any input or internal topic (every stage done). The
raw aiokafka consume rate of that run's geo-pings, measured in this process right after, is the
baseline of the ratio.

Usage (own broker, see bench/RESULTS.md):
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_scaleout.py --pings 100000 --workers 1,2 --rounds 2
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import consume  # noqa: E402
from bench_streaming import INPUTS, _proc_cpu_s, _vm, free_port, group_lag  # noqa: E402
from streams.settings import Settings  # noqa: E402
from tests.e2e.helpers import wait_group_stable  # noqa: E402

INTERNAL = ["crossing-cells", "crossing-pairs", "stats-cells", "stats-connections"]


def backlog(pings: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    """The simulated city's messages, as bench_streaming produces them, kept in memory."""
    from streams.tools.simulator import SimulationParams, simulate_city

    hours = 2.0
    users = max(2, -(-pings // 100) + 2)
    start = (int(time.time()) // 60) * 60 - hours * 3600
    params = SimulationParams(users=users, hours=hours, seed=seed, start=start, malformed_share=0.0)
    out, n = [], 0
    for topic, key, value in simulate_city(params):
        if topic == "geo-pings":
            if n >= pings:
                break
            n += 1
        out.append((topic, key, value))
    return out


async def produce_fast(settings: Settings, messages: list) -> None:
    """Produce `messages` in order through aiokafka record batches, placed like Kafka's default
    partitioner (~3 µs per message; kafka-python's send() takes ~40 µs and would use a core the
    workers need for as long as the drain lasts)."""
    from aiokafka import AIOKafkaProducer

    from streams.plumbing.partitioner import partitions_for

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks=1, linger_ms=0,
                                max_batch_size=1024 * 1024, client_id="bench-scaleout")
    await producer.start()
    try:
        parts = partitions_for([key for _, key, _ in messages], settings.partitions)
        batches: dict[tuple[str, int], object] = {}
        for (topic, key, value), part in zip(messages, parts):
            slot = (settings.topic(topic), part)
            batch = batches.get(slot)
            if batch is None:
                batch = batches[slot] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                batch.close()
                await producer.send_batch(batch, slot[0], partition=part)
                batch = batches[slot] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for (name, part), batch in batches.items():
            batch.close()
            await producer.send_batch(batch, name, partition=part)
        await producer.flush()
    finally:
        await producer.stop()


def run(n_workers: int, messages: list, args, tag: str) -> dict:
    from streams.tools.demo import start_worker, stop_worker
    from streams.topics import create_topics

    base = Settings(topic_prefix=f"bench-scale-{tag}.", app_id=f"bench-scale-{tag}", partitions=args.partitions)
    create_topics(base)
    procs = []
    try:
        for i in range(n_workers):
            port = free_port()
            log = Path(base.home) / "logs" / f"bench-scale-{tag}-{i}.log"
            procs.append(start_worker(base, port, log))
        t_join = time.perf_counter()
        wait_group_stable(base, members=n_workers, timeout_s=120)
        stable_s = time.perf_counter() - t_join
        time.sleep(2)  # table recovery after the assignment
        cpu0 = [_proc_cpu_s(p.pid) for p in procs]
        t0 = time.perf_counter()
        asyncio.run(produce_fast(base, messages))
        t_produced = time.perf_counter()
        t_done = None
        while time.perf_counter() - t0 < args.timeout:
            if group_lag(base, INTERNAL + list(INPUTS)) == 0:
                t_done = time.perf_counter()
                break
            time.sleep(0.25)
        cpu = [(_proc_cpu_s(p.pid) - c) for p, c in zip(procs, cpu0)]
        hwm = [_vm(p.pid, "VmHWM") for p in procs]
    finally:
        for p in procs:
            stop_worker(p)
    t_raw = time.perf_counter()
    n = asyncio.run(consume(base, base.topic("geo-pings")))
    raw = n / (time.perf_counter() - t_raw)
    pings = sum(1 for t, _, _ in messages if t == "geo-pings")
    wall = (t_done - t0) if t_done else float("nan")
    return {"workers": n_workers, "stable_s": stable_s, "produce_s": t_produced - t0, "wall": wall,
            "rate": pings / wall, "raw": raw, "cpu": cpu, "hwm": hwm, "timeout": t_done is None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pings", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated, run alternately")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    print(f"run {run_id}: {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f}, "
          f"{args.partitions} partitions; generating the backlog ...", flush=True)
    messages = backlog(args.pings, args.seed)
    print(f"  {len(messages):,} messages ({sum(t == 'geo-pings' for t, _, _ in messages):,} geo-pings)", flush=True)
    results = []
    for r in range(args.rounds):
        for n in counts:
            res = run(n, messages, args, f"{run_id}-r{r}-w{n}")
            results.append(res)
            print(f"  round {r + 1}, {n} worker(s): {res['rate']:,.0f} pings/s through every stage "
                  f"({res['wall']:.1f} s; producing took {res['produce_s']:.1f} s of it); raw consume "
                  f"{res['raw']:,.0f} msg/s; worker CPU {', '.join(f'{c:.1f} s' for c in res['cpu'])}; "
                  f"peak RSS {', '.join(f'{h:.0f} MiB' for h in res['hwm'])}; group stable after "
                  f"{res['stable_s']:.1f} s" + ("; TIMEOUT" if res["timeout"] else ""), flush=True)
    print("\n== Scale-out (same backlog, every stage, one broker on this machine) ==")
    one = statistics.median([r["rate"] for r in results if r["workers"] == counts[0]])
    for n in counts:
        rs = [r for r in results if r["workers"] == n]
        rate = statistics.median([r["rate"] for r in rs])
        raw = statistics.median([r["raw"] for r in rs])
        runs = ", ".join(f"{r['rate']:,.0f}" for r in rs)
        print(f"{n} worker(s): {rate:>9,.0f} pings/s (runs: {runs}), "
              f"x{rate / one:.2f} of {counts[0]} worker(s); ratio to raw consume {rate / raw:.3f}")


if __name__ == "__main__":
    main()
