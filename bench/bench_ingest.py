"""Ingest path vs raw consume (not run in CI).

Produces N simulated pings to a fresh geo-pings topic on a real broker, then, in
this one process and interleaved (so the ratios see the same CPU contention):

  (a) raw consume   AIOKafkaConsumer, assigned partitions, beginning -> end offsets;
  (b) ingest path   the same consume loop plus what the worker's ingest agent does per
                    message, without Kafka sends: schemas.events.decode_ping_fast (falling
                    back to decode('ping', ...)) + the consent gate as streams.stages.users.UserCache.schedule
                    does it (one cached PurposeSchedule per user and consent record);
  (c) pure CPU      (b)'s per-message work alone, on the pre-fetched (key, value) bytes.

Usage (own broker, see bench/RESULTS.md):
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_ingest.py             # 200k pings
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_ingest.py --pings 50000 --repeat 1
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from anonymizers.consent import Consent, Purpose, PurposeSchedule, allowed_purposes  # noqa: E402
from schemas.events import Limits, Rejection, decode, decode_ping_fast  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.tools.simulator import SimulationParams, simulate_city  # noqa: E402
from streams.topics import create_topics  # noqa: E402


# --------------------------------------------------------------------------- machine load
def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = open("/proc/stat").readline().split()[1:]
    vals = [int(x) for x in f[:8]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


class Load:
    """Machine-wide busy cores and this process's CPU over a timed section."""

    def __enter__(self):
        self.b0, self.t0 = _cpu_jiffies()
        self.c0, self.w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        b1, t1 = _cpu_jiffies()
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0
        ncpu = os.cpu_count() or 1
        self.machine_busy_cores = (b1 - self.b0) / max(1, t1 - self.t0) * ncpu
        self.others_cores = max(0.0, self.machine_busy_cores - self.cpu / self.wall)
        return False

    def describe(self) -> str:
        return (f"wall {self.wall:.2f} s, own CPU {self.cpu:.2f} s ({self.cpu / self.wall:.2f} cores), "
                f"machine busy {self.machine_busy_cores:.2f}/{os.cpu_count()} cores "
                f"(others ~{self.others_cores:.2f})")


# --------------------------------------------------------------------------- data
def build_workload(n: int, seed: int, malformed_share: float):
    """n simulated pings (key, value) plus each user's initial consent, as the worker's table holds it."""
    hours = 2.0
    users = max(2, -(-n // 100) + 2)  # ~115 pings per user over 2 h; the surplus is cut
    start = (int(time.time()) // 60) * 60 - hours * 3600
    params = SimulationParams(users=users, hours=hours, seed=seed, start=start, malformed_share=malformed_share)
    pings: list[tuple[bytes, bytes]] = []
    consents: dict[str, dict] = {}
    for topic, key, value in simulate_city(params):
        if topic == "geo-pings":
            if len(pings) < n:
                pings.append((key, value))
        elif topic == "consents" and value is not None:
            rec = decode("consent", value, Limits(), key=key)
            if isinstance(rec, Rejection) or rec.user_id in consents:
                continue  # keep the initial state only
            consents[rec.user_id] = Consent(
                user_id=rec.user_id, updated_at=rec.updated_at, geolocation=rec.geolocation,
                crossings=rec.crossings, partner_sharing=rec.partner_sharing, deleted=rec.deleted).to_dict()
    return pings, consents, users


def produce(settings: Settings, topic: str, pings) -> float:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20, batch_size=256 * 1024,
                             acks=1, client_id="bench-ingest")
    t0 = time.perf_counter()
    for key, value in pings:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the per-message work
def make_ingest(settings: Settings, consents: dict[str, dict]):
    limits = Limits(max_bytes=settings.max_message_bytes, max_future_skew_s=settings.max_future_skew_s)
    max_age = settings.consent_max_age_months
    outcome = {"accepted": 0, "rejected": 0, "dropped_consent": 0}

    schedules: dict[str, tuple[object, PurposeSchedule]] = {}
    no_consent = PurposeSchedule.of(None, max_age)

    def ingest(key: bytes, value: bytes) -> None:
        now = time.time()
        fields = decode_ping_fast(value, limits, now, key=key)
        if fields is None:
            ping = decode("ping", value, limits, now=now, key=key)
            if isinstance(ping, Rejection):
                outcome["rejected"] += 1
                return
            fields = (ping.user_id, ping.ts)
        user, ts = fields[0], fields[1]
        raw = consents.get(user)
        if raw is None:
            schedule = no_consent
        else:
            cached = schedules.get(user)
            if cached is None or cached[0] is not raw:
                cached = schedules[user] = (raw, PurposeSchedule.of(Consent.from_dict(raw), max_age))
            schedule = cached[1]
        if Purpose.GEOLOCATION not in schedule.at(ts):
            outcome["dropped_consent"] += 1
            return
        outcome["accepted"] += 1

    return ingest, outcome


async def consume(settings: Settings, topic: str, per_message=None, keep: list | None = None) -> int:
    """Read `topic` from the beginning to its current end; call per_message(key, value) on each record."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest", client_id="bench-ingest")
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()  # consumer.topics() does not keep it
        parts = cluster.partitions_for_topic(topic) or set()
        if not parts:
            raise RuntimeError(f"topic {topic} has no partitions")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        n = 0
        while remaining:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for tp, records in batch.items():
                for rec in records:
                    if per_message is not None:
                        per_message(rec.key, rec.value)
                    if keep is not None:
                        keep.append((rec.key, rec.value))
                n += len(records)
                if records and records[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
        return n
    finally:
        await consumer.stop()


def pure_cpu(ingest, data, sample_every: int = 1) -> tuple[float, list[int]]:
    """(seconds for the whole list, per-message ns of every sample_every-th message)."""
    t0 = time.perf_counter()
    for key, value in data:
        ingest(key, value)
    total = time.perf_counter() - t0
    lat = []
    pc = time.perf_counter_ns
    for key, value in data[::sample_every]:
        a = pc()
        ingest(key, value)
        lat.append(pc() - a)
    return total, lat


def breakdown(settings: Settings, consents: dict[str, dict], data) -> dict[str, float]:
    """us per message of the pieces of (c): json.loads alone, decode(), consent lookup + allowed_purposes."""
    import json

    limits = Limits(max_bytes=settings.max_message_bytes, max_future_skew_s=settings.max_future_skew_s)
    out = {}
    t0 = time.perf_counter()
    for _, value in data:
        json.loads(value)
    out["json.loads alone"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pings = [decode("ping", value, limits, key=key) for key, value in data]
    out["decode('ping') (incl. json.loads)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    now = time.time()
    for key, value in data:
        decode_ping_fast(value, limits, now, key=key)
    out["decode_ping_fast (worker's path, incl. orjson.loads)"] = time.perf_counter() - t0
    pings = [p for p in pings if not isinstance(p, Rejection)]
    max_age = settings.consent_max_age_months
    t0 = time.perf_counter()
    for p in pings:
        raw = consents.get(p.user_id)
        allowed_purposes(None if raw is None else Consent.from_dict(raw), p.ts, max_age)
    out["consent lookup + allowed_purposes"] = time.perf_counter() - t0
    return {k: v / len(data) * 1e6 for k, v in out.items()}


def pct(values, q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --------------------------------------------------------------------------- main
async def main_async(args) -> None:
    run = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    settings = Settings(topic_prefix=f"bench-ingest-{run}.", app_id=f"bench-ingest-{run}")
    topic = settings.topic("geo-pings")
    print(f"run {run}: bootstrap {settings.bootstrap_servers}, topic {topic} ({settings.partitions} partitions), "
          f"python {sys.version.split()[0]}, load avg {os.getloadavg()[0]:.2f}")

    t0 = time.perf_counter()
    pings, consents, users = build_workload(args.pings, args.seed, args.malformed_share)
    print(f"generated {len(pings)} pings from {users} users ({len(consents)} consents) "
          f"in {time.perf_counter() - t0:.1f} s; mean value {sum(len(v) for _, v in pings) / len(pings):.0f} B")
    create_topics(settings)
    print(f"produced in {produce(settings, topic, pings):.1f} s")

    ingest, outcome = make_ingest(settings, consents)
    raw_runs, ing_runs = [], []
    prefetched: list[tuple[bytes, bytes]] = []
    for i in range(args.repeat):
        with Load() as la:
            n_a = await consume(settings, topic, keep=prefetched if i == 0 else None)
        # keep= costs a list append per message; do not count that in the baseline: rerun cleanly
        if i == 0:
            with Load() as la:
                n_a = await consume(settings, topic)
        for k in outcome:
            outcome[k] = 0
        with Load() as lb:
            n_b = await consume(settings, topic, per_message=ingest)
        last_outcome = dict(outcome)
        raw_runs.append((n_a / la.wall, la))
        ing_runs.append((n_b / lb.wall, lb))
        print(f"  round {i + 1}: raw consume {n_a / la.wall:,.0f} msg/s ({la.describe()})")
        print(f"           ingest path {n_b / lb.wall:,.0f} msg/s ({lb.describe()}); outcomes {outcome}")
        assert n_a == n_b == len(pings), (n_a, n_b, len(pings))

    c_rates = []
    for _ in range(args.repeat):
        with Load() as lc:
            total_c, lat_ns = pure_cpu(ingest, prefetched)
        c_rates.append(len(prefetched) / total_c)
        print(f"  pure CPU ingest work: {c_rates[-1]:,.0f} msg/s ({lc.describe()})")
    rate_c = statistics.median(c_rates)
    parts = breakdown(settings, consents, prefetched)

    raw_rates = [r for r, _ in raw_runs]
    ing_rates = [r for r, _ in ing_runs]
    raw_med, ing_med = statistics.median(raw_rates), statistics.median(ing_rates)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    others = statistics.mean([l.others_cores for _, l in raw_runs + ing_runs] + [lc.others_cores])

    print("\n== Ingest path vs raw consume ==")
    rows = [
        ("pings (topic, partitions)", f"{len(pings):,} ({settings.partitions})"),
        ("(a) raw aiokafka consume, median of rounds", f"{raw_med:,.0f} msg/s  (rounds: " +
         ", ".join(f"{r:,.0f}" for r in raw_rates) + ")"),
        ("(b) consume + decode + consent gate", f"{ing_med:,.0f} msg/s  (rounds: " +
         ", ".join(f"{r:,.0f}" for r in ing_rates) + ")"),
        ("ratio (b)/(a)", f"{ing_med / raw_med:.2f}"),
        ("(c) ingest work alone on pre-fetched bytes", f"{rate_c:,.0f} msg/s ({1e6 / rate_c:.1f} us/msg), rounds: " +
         ", ".join(f"{r:,.0f}" for r in c_rates)),
        ("(c) per-message latency p50 / p99 / max", f"{pct(lat_ns, .5) / 1e3:.1f} / {pct(lat_ns, .99) / 1e3:.1f} / "
                                                     f"{max(lat_ns) / 1e3:.0f} us"),
        *[(f"(c) of which {k}", f"{v:.1f} us/msg") for k, v in parts.items()],
        ("raw consume cost per message (1/(a))", f"{1e6 / raw_med:.1f} us"),
        ("ingest path cost per message (1/(b))", f"{1e6 / ing_med:.1f} us"),
        ("outcomes of one (b) pass", str(last_outcome)),
        ("peak RSS of this process", f"{rss_mib:.0f} MiB (includes the generated workload)"),
        ("other processes' CPU during timed parts (mean)", f"~{others:.2f} of {os.cpu_count()} cores"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pings", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds of (a) and (b)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--malformed-share", type=float, default=0.0)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
