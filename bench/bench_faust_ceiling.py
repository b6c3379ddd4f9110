"""How fast can a Faust worker see messages at all? (not run in CI)

The streaming target of issue 3 is a ratio to the raw aiokafka consume rate. This bench measures
the ceiling the framework itself puts on that ratio, with handlers that do nothing but count:

  (a) raw consume    AIOKafkaConsumer, assigned partitions, beginning -> end (bench_ingest.consume)
  (b) faust events   a Faust agent, `async for event in stream.events()`
  (c) faust take     a Faust agent, `stream.take_events(500, within=0.05)` (the worker's old ingest)
  (d) batch agent    streams.plumbing.bulk.batch_agent: Faust's consumer hands each fetched partition batch
                     to one handler call (the worker's ingest now)
  (e) topology       the worker's stages with no work in them (--modes topology): batch agents that only
                     move bytes the way the pipeline must, input -> crossing cells and statistics
                     cells (one message per destination partition and batch, as the Outbox sends)
                     -> candidate pairs (--candidates-per-ping of the pings, batched the same way)
                     -> one record per participant, keyed by that participant and placed by
                     Kafka's partitioner (as the report stage sends them). No decoding, consent,
                     routing, detection or tables: the ceiling the pipeline's shape puts on the ratio.
  (f) plain          (e)'s stages without Faust: one AIOKafkaConsumer assigned the input and the
                     internal topics from the beginning, one AIOKafkaProducer, no consumer group,
                     no commits. Is the ceiling Faust's, or Kafka I/O's from Python on this machine?

(a) runs in this process before and after; (b)-(f) each in a fresh child process with its own
consumer group, on the same topic of --messages ~100-byte pings.

Each child's clock starts at its first handled batch. Keep --messages at 100k or more: with 20k,
(d) reads as ~2x raw consume (Faust has fetched most of the topic before its first call), and
(e)/(f) are mostly start-up.

Usage (own broker, see bench/RESULTS.md):
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_faust_ceiling.py
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_faust_ceiling.py \
        --modes batch,topology,plain --candidates-per-ping 0.66 --plot docs/bench-ceiling.png
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import consume, produce  # noqa: E402
from streams.plumbing.partitioner import partitions_for  # noqa: E402
from streams.settings import Settings  # noqa: E402

MODES = ("events", "take", "batch", "topology", "plain")


# The crossing record the report stage sends, at its usual size.
CROSSING = json.dumps({"type": "crossing", "user_id": "user-000123", "other_user_id": "user-001777",
                       "ts": "2026-11-30T10:00:00Z", "place": "8a1fb46622dffff", "place_resolution": 10,
                       "distance_band": "50-100 m", "emitted_at": "2026-11-30T10:05:01Z"}).encode()
STAGES = ("cells", "stats", "pairs", "out")


class EmptyStages:
    """(e) and (f): input -> cells + stats-cells -> pairs -> one output record per participant; nothing else.

    send(stage, key, value, partition) and send_many(stage, keys, values, partitions) hand messages
    to a producer; the handlers are called with the records of one fetched topic-partition.
    """

    def __init__(self, n: int, per_ping: float, send, send_many) -> None:
        self.n, self.per_ping, self.send, self.send_many = n, per_ping, send, send_many
        self.cells = self.stats = self.candidates = self.reported = 0
        self.owed = 0.0

    def done(self) -> bool:
        return self.cells >= self.n and self.stats >= self.n and self.reported >= self.candidates

    async def ingest(self, records) -> None:
        by_dest: dict[int, list[bytes]] = {}
        for r in records:
            by_dest.setdefault(zlib.crc32(r.key) & 3, []).append(r.value)
        for q, values in by_dest.items():
            payload = b"\n".join(values)
            await self.send("cells", b"batch", payload, q)
            await self.send("stats", b"batch", payload, q)

    async def aggregate(self, records) -> None:
        self.stats += sum(r.value.count(b"\n") + 1 for r in records)

    async def detect(self, records) -> None:
        by_dest: dict[int, list[bytes]] = {}
        for r in records:
            values = r.value.split(b"\n")
            self.cells += len(values)
            self.owed += self.per_ping * len(values)
            k = int(self.owed)
            self.owed -= k
            self.candidates += k
            for i in range(k):
                by_dest.setdefault(i & 3, []).append(values[i % len(values)])
        for q, values in by_dest.items():
            await self.send("pairs", b"batch", b"\n".join(values), q)

    async def report(self, records) -> None:
        keys, values = [], []
        for r in records:
            for i, _ in enumerate(r.value.split(b"\n")):
                keys += [b"user-%06d" % (i % 2000), b"user-%06d" % ((i + 1) % 2000)]
                values += [CROSSING, CROSSING]
                self.reported += 1
        await self.send_many("out", keys, values, partitions_for(keys, 4))


async def send_batches(producer, name: str, keys, values, parts) -> None:
    """Messages as record batches, one per partition (as streams.plumbing.outbox.send_many)."""
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


def topology(app, source, n: int, per_ping: float, count) -> None:
    """(e): the empty stages as batch agents of one Faust worker."""
    from streams.plumbing.bulk import batch_agent

    topics = {name: app.topic(f"{source.get_topic_name()}-{name}", partitions=4, key_serializer="raw",
                              value_serializer="raw", internal=True) for name in STAGES}

    async def send(stage, key, value, partition):
        await app.producer.send(topics[stage].get_topic_name(), key, value, partition, None, None)

    async def send_many(stage, keys, values, parts):
        await send_batches(app.producer._ensure_producer(), topics[stage].get_topic_name(), keys, values, parts)

    stages = EmptyStages(n, per_ping, send, send_many)

    def agent(topic, handler):
        @batch_agent(app, topic)
        async def run(tp, records):
            count(0)  # starts the clock
            await handler(records)
            if stages.done():
                await app.producer.flush()  # every output record acknowledged
                count(n)

    agent(source, stages.ingest)
    agent(topics["stats"], stages.aggregate)
    agent(topics["cells"], stages.detect)
    agent(topics["pairs"], stages.report)


async def plain_topology(topic: str, n: int, per_ping: float, bootstrap: str) -> float:
    """(f): the same empty stages on one AIOKafkaConsumer and AIOKafkaProducer, no Faust; seconds taken."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    names = {stage: f"{topic}-plain-{stage}" for stage in STAGES}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024, acks=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await producer.start()
    await consumer.start()

    async def send(stage, key, value, partition):
        await producer.send(names[stage], value, key=key, partition=partition)

    async def send_many(stage, keys, values, parts):
        await send_batches(producer, names[stage], keys, values, parts)

    stages = EmptyStages(n, per_ping, send, send_many)
    handlers = {topic: stages.ingest, names["stats"]: stages.aggregate, names["cells"]: stages.detect,
                names["pairs"]: stages.report}
    tps = [TopicPartition(t, q) for t in handlers for q in range(4)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    t0 = None
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for tp, records in fetched.items():
                t0 = t0 or time.perf_counter()
                await handlers[tp.topic](records)
            if t0 and stages.done():
                await producer.flush()
                return time.perf_counter() - t0
    finally:
        await consumer.stop()
        await producer.stop()


def child(mode: str, topic: str, n: int, bootstrap: str, per_ping: float) -> None:
    """Run a Faust worker whose agents handle `n` messages of `topic`, print the time taken, exit."""
    if mode == "plain":
        seconds = asyncio.run(plain_topology(topic, n, per_ping, bootstrap))
        print(json.dumps({"mode": mode, "n": n, "seconds": seconds}), flush=True)
        return
    import faust

    from streams.plumbing.bulk import batch_agent

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
    ap.add_argument("--candidates-per-ping", type=float, default=0.66,
                    help="(e), (f): candidate pairs per ping reaching the report stage (the simulated city: 0.66)")
    ap.add_argument("--plot", type=Path, help="also draw the ratios as a bar chart (PNG) at this path")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=RATIO",
                    help="a ratio measured elsewhere to draw beside them (in grey), e.g. the worker's from "
                         "bench_streaming.py; repeatable")
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
        [NewTopic(topic, 4, 1), NewTopic(f"{topic}-out", 4, 1)]  # -out: (e)'s output, read by nobody
        + [NewTopic(f"{topic}-plain-{stage}", 4, 1) for stage in STAGES])  # (f)'s
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
              "batch": "(d) one empty batch agent", "topology": "(e) the pipeline's stages, empty",
              "plain": "(f) the same, plain aiokafka"}
    for mode, rate in rates.items():
        print(f"{labels[mode]:<34} {rate:>10,.0f} msg/s   ratio {rate / base:.3f}")
    if args.plot and rates:
        plot(args.plot, {labels[mode]: rate / base for mode, rate in rates.items()}, base, args)
        print(f"chart: {args.plot}")


def plot(path: Path, ratios: dict[str, float], base: float, args) -> None:
    """Horizontal bars of each mode's ratio to raw consume (and --also ones), with issue 3's target at 0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(label, ratio, "#4c72b0") for label, ratio in ratios.items()]
    for item in args.also:
        label, _, ratio = item.rpartition("=")
        bars.append((label, float(ratio), "#999999"))
    bars.reverse()
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * len(bars) + 1.8))
    drawn = ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.bar_label(drawn, fmt="%.3f", padding=3)
    ax.axvline(0.5, color="#c44e52", linestyle="--", label="issue 3's target (0.5)")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel(f"pings/s ÷ raw aiokafka consume (this run: {base:,.0f} msg/s)")
    ax.set_title(f"What one worker can reach, with no work per ping (blue; {args.messages:,} pings,\n"
                 f"{args.candidates_per_ping:g} candidate pairs per ping) and as measured elsewhere (grey)",
                 fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
