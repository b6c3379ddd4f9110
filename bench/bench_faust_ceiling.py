"""How fast can a Faust worker see messages at all? (not run in CI)

The streaming target of issue 3 is a ratio to the raw aiokafka consume rate. This bench measures
the ceiling the framework itself puts on that ratio, with handlers that do nothing but count:

  (a) raw consume    AIOKafkaConsumer, assigned partitions, beginning -> end (bench_ingest.consume)
  (b) faust events   a Faust agent, `async for event in stream.events()`
  (c) faust take     a Faust agent, `stream.take_events(500, within=0.05)` (the worker's old ingest)
  (d) batch agent    streams.bulk.batch_agent: Faust's consumer hands each fetched partition batch
                     to one handler call (the worker's ingest now)
  (e) topology       the worker's stages with no work in them (--modes topology): batch agents that only
                     move bytes the way the pipeline must, input -> crossing cells and statistics
                     cells (one message per destination partition and batch, as the Outbox sends)
                     -> candidate pairs (--candidates-per-ping of the pings, batched the same way)
                     -> one record per participant, keyed by that participant and placed by
                     Kafka's partitioner (as the report stage sends them). No decoding, consent,
                     routing, detection or tables: the ceiling the pipeline's shape puts on the ratio.

(a) runs in this process before and after; (b)-(e) each in a fresh child process with its own
consumer group, on the same topic of --messages ~100-byte pings.

Usage (own broker, see bench/RESULTS.md):
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_faust_ceiling.py
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import consume, produce  # noqa: E402
from streams.settings import Settings  # noqa: E402

MODES = ("events", "take", "batch", "topology")


def topology(app, source, n: int, per_ping: float, count) -> None:
    """(e): input -> cells + stats-cells -> pairs -> one output record per participant; nothing else."""
    import zlib

    from streams.bulk import batch_agent
    from streams.partitioner import partitions_for

    def internal(name: str):
        return app.topic(f"{source.get_topic_name()}-{name}", partitions=4, key_serializer="raw",
                         value_serializer="raw", internal=True)

    cells, stats, pairs, out = internal("cells"), internal("stats"), internal("pairs"), internal("out")
    # The crossing record the report stage sends, at its usual size.
    crossing = json.dumps({"type": "crossing", "user_id": "user-000123", "other_user_id": "user-001777",
                           "ts": "2026-11-30T10:00:00Z", "place": "8a1fb46622dffff", "place_resolution": 10,
                           "distance_band": "50-100 m", "emitted_at": "2026-11-30T10:05:01Z"}).encode()
    state = {"cells": 0, "stats": 0, "owed": 0.0, "candidates": 0, "reported": 0}

    async def send(topic, key, value, partition):
        await app.producer.send(topic.get_topic_name(), key, value, partition, None, None)

    async def send_many(topic, keys, values, parts):  # as streams.app._send_many
        producer = app.producer._ensure_producer()
        name = topic.get_topic_name()
        batches = {}
        for key, value, q in zip(keys, values, parts):
            batch = batches.get(q)
            if batch is None:
                batch = batches[q] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                await producer.send_batch(batch, name, partition=q)
                batch = batches[q] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for q, batch in batches.items():
            batch.close()
            await producer.send_batch(batch, name, partition=q)

    async def done() -> None:
        if state["cells"] >= n and state["stats"] >= n and state["reported"] >= state["candidates"]:
            await app.producer.flush()  # every output record acknowledged
            count(n)

    @batch_agent(app, source)
    async def ingest(tp, records):
        count(0)
        by_dest: dict[int, list[bytes]] = {}
        for r in records:
            by_dest.setdefault(zlib.crc32(r.key) & 3, []).append(r.value)
        for q, values in by_dest.items():
            payload = b"\n".join(values)
            await send(cells, b"batch", payload, q)
            await send(stats, b"batch", payload, q)

    @batch_agent(app, stats)
    async def aggregate(tp, records):
        state["stats"] += sum(r.value.count(b"\n") + 1 for r in records)
        await done()

    @batch_agent(app, cells)
    async def detect(tp, records):
        by_dest: dict[int, list[bytes]] = {}
        for r in records:
            values = r.value.split(b"\n")
            state["cells"] += len(values)
            state["owed"] += per_ping * len(values)
            k = int(state["owed"])
            state["owed"] -= k
            state["candidates"] += k
            for i in range(k):
                by_dest.setdefault(i & 3, []).append(values[i % len(values)])
        for q, values in by_dest.items():
            await send(pairs, b"batch", b"\n".join(values), q)
        await done()

    @batch_agent(app, pairs)
    async def report(tp, records):
        keys, values = [], []
        for r in records:
            for i, _ in enumerate(r.value.split(b"\n")):
                keys += [b"user-%06d" % (i % 2000), b"user-%06d" % ((i + 1) % 2000)]
                values += [crossing, crossing]
                state["reported"] += 1
        await send_many(out, keys, values, partitions_for(keys, 4))
        await done()


def child(mode: str, topic: str, n: int, bootstrap: str, per_ping: float = 0.4) -> None:
    """Run a Faust worker whose only agent counts `n` messages of `topic`, print the rate, exit."""
    import faust

    from streams.bulk import batch_agent

    app = faust.App(f"ceiling-{mode}-{topic}", broker=f"kafka://{bootstrap}", store="memory://",
                    consumer_auto_offset_reset="earliest", web_enabled=False, stream_buffer_maxsize=16384,
                    broker_commit_every=2000, stream_wait_empty=False,
                    datadir=f"/tmp/crosspaths-ceiling-{os.getpid()}")
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "t0": 0.0}

    def count(k: int) -> None:
        if not seen["t0"]:
            seen["t0"] = time.perf_counter()
        seen["n"] += k
        if seen["n"] >= n:
            elapsed = time.perf_counter() - seen["t0"]
            print(json.dumps({"mode": mode, "n": seen["n"], "seconds": elapsed}), flush=True)
            os._exit(0)

    if mode == "topology":
        topology(app, source, n, per_ping, count)
    elif mode == "batch":
        @batch_agent(app, source)
        async def counter(tp, records):
            count(len(records))
    else:
        @app.agent(source)
        async def counter(stream):
            if mode == "take":
                async for events in stream.take_events(500, within=0.05):
                    count(len(events))
            else:
                async for _ in stream.events():
                    count(1)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


def raw_rate(settings: Settings, topic: str) -> float:
    """Messages per second of a raw aiokafka read of the whole topic."""
    t = time.perf_counter()
    n = asyncio.run(consume(settings, topic))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    ap.add_argument("--candidates-per-ping", type=float, default=0.4,
                    help="(e): candidate pairs per ping reaching the report stage (the simulated city: ~0.4)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = Settings()
    if args.child:
        child(args.child, args.topic, args.messages, settings.bootstrap_servers, args.candidates_per_ping)
        return
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"bench-ceiling-{int(time.time())}"
    KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers).create_topics(
        [NewTopic(topic, 4, 1), NewTopic(f"{topic}-out", 4, 1)])  # -out: (e)'s output, read by nobody
    value = json.dumps({"schema_version": 1, "user_id": "user-000123", "ts": "2026-11-30T10:00:00.000Z",
                        "lat": 48.85661, "lon": 2.35222, "accuracy_m": 12.0}).encode()
    took = produce(settings, topic, ((f"user-{i % 2000:06d}".encode(), value) for i in range(args.messages)))
    print(f"produced {args.messages:,} messages of {len(value)} B to {topic} in {took:.1f} s")
    raw = [raw_rate(settings, topic)]
    rates = {}
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--topic", topic,
                              "--messages", str(args.messages), "--candidates-per-ping", str(args.candidates_per_ping)],
                             capture_output=True, text=True, timeout=900)
        # Faust's worker sends stdout through its logger, so the line may come with a log prefix.
        line = next((ln for ln in (out.stdout + out.stderr).splitlines() if '{"mode"' in ln), None)
        if line is None:
            print(f"  {mode}: no result\n{out.stderr[-2000:]}")
            continue
        result = json.loads(line[line.index("{"): line.rindex("}") + 1])
        rates[mode] = result["n"] / result["seconds"]
    raw.append(raw_rate(settings, topic))
    base = sum(raw) / len(raw)
    print(f"(a) raw aiokafka consume           {base:>10,.0f} msg/s (before {raw[0]:,.0f}, after {raw[1]:,.0f})")
    labels = {"events": "(b) faust agent, stream.events()", "take": "(c) faust agent, take_events(500)",
              "batch": "(d) batch agent (streams.bulk)", "topology": "(e) the stages, empty (see above)"}
    for mode, rate in rates.items():
        print(f"{labels[mode]:<34} {rate:>10,.0f} msg/s   ratio {rate / base:.3f}")


if __name__ == "__main__":
    main()
