"""The full pipeline through Kafka with ONE worker process (not run in CI).

Phases, all in one run against one broker (fresh topics and app id per run):

  (a) backlog    produce a simulated city (streams.tools.simulator, malformed_share=0) of about
                 --pings geo-pings BEFORE the worker starts; measure the raw aiokafka consume
                 rate of geo-pings (same process, same run); start `crosspaths worker` and time
                 until its counters show every message received, then until the consumer group
                 has no lag left on the internal topics (downstream stages done).
  (b) latency    for each --rate (comma-separated), produce pairs of pings engineered to cross
                 (two fresh users at the same spot, ts = now) at that rate for --latency-seconds;
                 a separate process consumes the crossings topic and records arrival wall-clock;
                 latency = arrival of the pair's first crossing record - produce wall-clock of
                 the pair's second ping.  Worker backlog (produced - received) is sampled each second.
  (c) memory     the worker's peak RSS (VmHWM from /proc/<pid>/status).

Usage (own broker, see bench/RESULTS.md):
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_streaming.py                  # 100k, 2000/s
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/bench_streaming.py --pings 20000 \\
        --rate 2000 --latency-seconds 10                                                          # ~1 min
    ... --rate 2000,10000        # several rates, one after the other, on the same worker
    ... --profile-seconds 20     # py-spy the worker while it drains the backlog (perturbs the timing)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_ingest's Kafka helpers

from bench_ingest import _cpu_jiffies, consume  # noqa: E402
from streams.settings import Settings  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
INPUTS = ("geo-pings", "connection-logs", "consents")


# --------------------------------------------------------------------------- machine and process load
def _proc_cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def _vm(pid: int, field: str) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")


class Load:
    """Machine busy cores, the worker's cores and this process's cores over a section."""

    def __init__(self, worker_pid: int | None = None):
        self.pid = worker_pid

    def __enter__(self):
        self.b0, self.t0 = _cpu_jiffies()
        self.c0, self.w0 = time.process_time(), time.perf_counter()
        self.k0 = _proc_cpu_s(self.pid) if self.pid else 0.0
        return self

    def __exit__(self, *exc):
        b1, t1 = _cpu_jiffies()
        self.wall = time.perf_counter() - self.w0
        self.own = (time.process_time() - self.c0) / self.wall
        self.worker = (_proc_cpu_s(self.pid) - self.k0) / self.wall if self.pid else 0.0
        self.machine = (b1 - self.b0) / max(1, t1 - self.t0) * (os.cpu_count() or 1)
        self.others = max(0.0, self.machine - self.own - self.worker)
        return False

    def describe(self) -> str:
        return (f"machine busy {self.machine:.2f}/{os.cpu_count()} cores: worker {self.worker:.2f}, "
                f"bench {self.own:.2f}, others (broker, other users) ~{self.others:.2f}")


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_received(port: int) -> dict[str, int]:
    """received per input topic suffix, from the worker's /counters/ page (its in-memory table)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/counters/", timeout=5) as r:
        table = json.loads(r.read())
    out: Counter = Counter()
    for key, counts in table.items():
        topic = key.rsplit("/", 1)[0]
        for name in INPUTS:
            if topic.endswith("." + name) or topic == name:
                out[name] += int((counts or {}).get("received", 0))
    return dict(out)


def web_batches(port: int) -> dict[str, dict]:
    """The worker's time per batch topic (its /batches/ page): busy_s, records, calls since start."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/batches/", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return {}


def stage_split(before: dict, after: dict, wall: float) -> str:
    """Share of wall-clock time and µs per record of each stage between two /batches/ snapshots."""
    parts = []
    for topic, a in sorted(after.items()):
        b = before.get(topic, {"busy_s": 0.0, "records": 0})
        busy, n = a["busy_s"] - b["busy_s"], a["records"] - b["records"]
        name = topic.rsplit(".", 1)[-1]
        parts.append(f"{name} {busy / wall:.0%}" + (f" ({busy / n * 1e6:,.1f} µs/msg)" if n and "(" not in name else ""))
    return ", ".join(parts)


def group_lag(settings: Settings, names: list[str]) -> int:
    """Committed-offset lag of the worker's consumer group summed over topics `names`."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="bench-lag")
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)
    try:
        committed = admin.list_group_offsets(settings.app_id).get(settings.app_id, {})
        tps = [TopicPartition(settings.topic(n), p) for n in names for p in range(settings.partitions)]
        end = consumer.end_offsets(tps)
        return sum(max(0, end[tp] - (committed[tp].offset if tp in committed else 0)) for tp in tps)
    finally:
        consumer.close()
        admin.close()


def pct(values, q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


# --------------------------------------------------------------------------- (a) backlog
def produce_backlog(settings: Settings, pings: int, seed: int) -> dict[str, int]:
    from kafka import KafkaProducer

    from streams.tools.simulator import SimulationParams, simulate_city

    hours = 2.0
    users = max(2, -(-pings // 100) + 2)  # ~115 pings per user over 2 h; the tail is cut in event time
    start = (int(time.time()) // 60) * 60 - hours * 3600
    params = SimulationParams(users=users, hours=hours, seed=seed, start=start, malformed_share=0.0)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20, batch_size=256 * 1024,
                             acks=1, client_id="bench-backlog")
    counts: Counter = Counter()
    for topic, key, value in simulate_city(params):
        if topic == "geo-pings" and counts["geo-pings"] >= pings:
            break  # event-time order: every topic is cut at the same simulated instant
        producer.send(settings.topic(topic), key=key, value=value)
        counts[topic] += 1
    producer.flush()
    producer.close()
    return dict(counts)


def run_backlog(settings: Settings, args, port: int, log: Path, out: dict):
    from streams.tools.demo import start_worker
    from streams.tools.report import read_counters

    t0 = time.perf_counter()
    produced = produce_backlog(settings, args.pings, args.seed)
    out["produced"] = produced
    print(f"(a) produced backlog {produced} in {time.perf_counter() - t0:.1f} s")

    raw = []
    for _ in range(args.raw_rounds):
        with Load() as ld:
            n = asyncio.run(consume(settings, settings.topic("geo-pings")))
        raw.append(n / ld.wall)
        print(f"    raw aiokafka consume of geo-pings: {n} in {ld.wall:.2f} s = {n / ld.wall:,.0f} msg/s "
              f"({ld.describe()})")
    out["raw"] = raw

    total = sum(produced.values())
    t_launch = time.perf_counter()
    proc = out["proc"] = start_worker(settings, port, log)
    t_web = time.perf_counter()
    print(f"    worker pid {proc.pid} answered on :{port} after {t_web - t_launch:.1f} s; log {log}")
    prof = None
    t_first = t_done = None
    last_print = 0.0
    load = Load(proc.pid).__enter__()
    while True:
        try:
            got = web_received(port)
        except OSError:
            got = {}
        now = time.perf_counter()
        done = sum(min(got.get(t, 0), n) for t, n in produced.items())
        if t_first is None and done > 0:
            t_first = now
            out["batches0"] = web_batches(port)
            load = Load(proc.pid).__enter__()  # measure the drain only
            if args.profile_seconds and args.profile_phase == "backlog":
                prof = start_profile(proc.pid, args.profile_seconds, args.profile_out)
        if done >= total:
            t_done = now
            break
        if now - last_print > 5:
            print(f"    ... {done}/{total} received ({now - t_launch:.0f} s after launch)", flush=True)
            last_print = now
        if now - t_launch > args.timeout:
            print(f"    TIMEOUT: {done}/{total} received after {args.timeout} s")
            break
        time.sleep(0.2)
    load.__exit__(None, None, None)
    out["worker_pid"] = proc.pid
    out["drain_load"] = load
    if t_done is None:
        out["timeout"] = True
        return proc, prof
    # downstream stages: group lag on the internal and input topics
    internal = ["crossing-cells", "crossing-pairs", "stats-cells", "stats-connections"]
    t_lag = None
    while time.perf_counter() - t_done < args.timeout:
        lag = group_lag(settings, internal + list(INPUTS))
        if lag == 0:
            t_lag = time.perf_counter()
            out["stages"] = stage_split(out["batches0"], web_batches(port), t_lag - t_first)
            break
        time.sleep(0.5)
    counters = read_counters(settings)  # the changelog, as `crosspaths stats counters` reads it
    t_cl = time.perf_counter()
    # >=: the worker itself writes tombstones to consents for deleted users, and receives them too
    while not all(counters.topics[t].received >= n for t, n in produced.items()) and time.perf_counter() - t_cl < 60:
        print(f"    changelog counters not complete yet: { {t: c.received for t, c in counters.topics.items()} }")
        time.sleep(2)
        counters = read_counters(settings)
    out["changelog_wait"] = time.perf_counter() - t_cl
    out.update(t_launch=t_launch, t_web=t_web, t_first=t_first, t_done=t_done, t_lag=t_lag,
               counters={t: vars(c) | {"reconciles": c.reconciles} for t, c in counters.topics.items()},
               changelog_ok=all(counters.topics[t].received >= n for t, n in produced.items()))
    return proc, prof


def start_profile(pid: int, seconds: int, path: str) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("    py-spy not found; no profile")
        return None
    print(f"    py-spy recording the worker for {seconds} s -> {path}")
    idle = ["--idle"] if os.environ.get("BENCH_PROFILE_IDLE") else []  # also where the loop waits
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(seconds), "-f", "raw", "-o", path,
                             "--nonblocking", *idle], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_frames(path: str, n: int = 10) -> list[tuple[float, float, str]]:
    """(inclusive share, self share, frame) of the n frames with the largest inclusive share."""
    inclusive: Counter = Counter()
    own: Counter = Counter()
    total = 0
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = stack.split(";")
        for f in set(frames):
            inclusive[f] += c
        own[frames[-1]] += c
    return [(v / total, own[f] / total, f) for f, v in inclusive.most_common(n + 5)
            if not f.startswith("process ") and not f.startswith("thread ")][:n]


# --------------------------------------------------------------------------- (b) latency
async def consumer_at_end(bootstrap: str, topic: str, client_id: str, **options):
    """A started aiokafka consumer (no group) assigned every partition of `topic`, positioned at its end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=20, client_id=client_id, **options)
    await consumer.start()
    cluster = await consumer._client.fetch_all_metadata()
    tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


def crossing_listener(bootstrap: str, topic: str, tag: str, ready, stop, results) -> None:
    """Child process: record (user, other, arrival wall-clock, emitted_at, ...) of our crossing records."""
    asyncio.run(_listen(bootstrap, topic, tag, ready, stop, results))


async def _listen(bootstrap: str, topic: str, tag: str, ready, stop, results) -> None:
    # aiokafka + orjson: at 10k pings/s there are 10k crossing records/s to read, and a kafka-python
    # consumer with json.loads took a third of a core doing it, next to the worker being measured
    import orjson

    consumer = await consumer_at_end(bootstrap, topic, "bench-crossings")
    ready.set()
    seen = []
    stop_at = None
    needle = tag.encode()
    while True:
        batch = await consumer.getmany(timeout_ms=50)
        now = time.time()
        for records in batch.values():
            for rec in records:
                if needle not in rec.value:
                    continue
                doc = orjson.loads(rec.value)
                if doc.get("type") == "crossing":
                    seen.append((doc["user_id"], doc["other_user_id"], now, doc.get("emitted_at"), doc.get("ts"),
                                 doc.get("place"), doc.get("distance_band")))
        if stop.is_set():
            stop_at = stop_at or time.monotonic()
            if time.monotonic() - stop_at > 5 and not batch:
                break
    await consumer.stop()
    results.put(seen)


async def produce_pairs(settings: Settings, rate: int, seconds: float, tag: str, port: int, base: int,
                        grid_base: int):
    """Produce pairs of crossing pings at `rate` pings/s for `seconds`; returns what was sent when.

    aiokafka batches built by hand (one per partition every 5 ms tick), partitioned like Kafka's
    default partitioner: ~10 µs per message, so the load generator leaves the worker its core
    (kafka-python's send() cost ~70 µs per message and took ~0.7 core at 10k/s).
    """
    from aiokafka import AIOKafkaProducer
    from kafka.partitioner.default import murmur2

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks=1, linger_ms=0,
                                max_batch_size=1024 * 1024, client_id="bench-latency")
    await producer.start()
    topic = settings.topic("geo-pings")
    parts = sorted(await producer.partitions_for(topic))
    rng = random.Random(rate)
    sent_b: dict[str, float] = {}  # pair id -> produce wall-clock of its second ping
    spots: dict[str, tuple] = {}
    sent = 0
    backlog_samples = []
    t0 = time.perf_counter()
    next_sample = 1.0
    tick = 0.005
    try:
        while True:
            el = time.perf_counter() - t0
            if el >= seconds:
                break
            due = int(el * rate) // 2 * 2
            batches: dict[int, object] = {}
            pending: list[tuple[str, float]] = []
            while sent < due:
                i = sent // 2
                pid = f"{tag}-{i}"
                # each pair on its own node of a ~1.1 km grid (36..58 N, 8 W..28 E), numbered across
                # phases: pairs never meet, not even those of an earlier rate still in the window
                g = grid_base + i
                lat = 36.0 + (g // 2400) % 2000 * 0.01 + rng.uniform(0, 0.001)
                lon = -8.0 + (g % 2400) * 0.015 + rng.uniform(0, 0.001)
                ts_ms = int(time.time() * 1000)
                for user, dlat in ((f"{pid}-a", 0.0), (f"{pid}-b", 0.00002)):
                    key = user.encode()
                    part = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
                    batch = batches.get(part)
                    if batch is None:
                        batch = batches[part] = producer.create_batch()
                    batch.append(key=key, timestamp=None, value=json.dumps(
                        {"user_id": user, "ts": ts_ms, "lat": round(lat + dlat, 6), "lon": round(lon, 6),
                         "accuracy_m": 10.0}, separators=(",", ":")).encode())
                pending.append((pid, 0.0))
                spots[pid] = (round(lat, 6), round(lon, 6), ts_ms)
                sent += 2
            for part, batch in batches.items():
                batch.close()
                await producer.send_batch(batch, topic, partition=part)
            t_b = time.time()  # the batches are handed to the producer: the pair's second ping leaves now
            for pid, _ in pending:
                sent_b[pid] = t_b
            if el >= next_sample:
                try:
                    got = web_received(port).get("geo-pings", 0) - base
                except OSError:
                    got = -1
                backlog_samples.append((round(el, 1), sent, sent - got))
                next_sample += 1.0
            await asyncio.sleep(tick)
        await producer.flush()
    finally:
        t_prod = time.perf_counter() - t0
        await producer.stop()
    return sent, t_prod, sent_b, spots, backlog_samples


def run_latency(settings: Settings, rate: int, seconds: float, port: int, worker_pid: int, args) -> dict:
    from schemas.timefmt import parse_ts

    tag = f"lat{rate}x{int(time.time()) % 100000}"
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    listener = ctx.Process(target=crossing_listener, args=(settings.bootstrap_servers, settings.topic("crossings"),
                                                           tag, ready, stop, results), daemon=True)
    listener.start()
    if not ready.wait(60):
        raise RuntimeError("crossings listener did not start")
    base = web_received(port).get("geo-pings", 0)
    prof = None
    if args.profile_seconds and args.profile_phase == "latency" and not getattr(args, "_profiled", False):
        args._profiled = True
        prof = start_profile(worker_pid, args.profile_seconds, args.profile_out)
    batches0 = web_batches(port)
    with Load(worker_pid) as ld:
        sent, t_prod, sent_b, spots, backlog_samples = asyncio.run(
            produce_pairs(settings, rate, seconds, tag, port, base, args.grid_base))
    stages = stage_split(batches0, web_batches(port), ld.wall)
    args.grid_base += sent // 2
    # drain: wait until the worker has received everything we sent, then until no stage has lag
    t_stop = time.perf_counter()
    drained = settled = None
    got = 0
    while time.perf_counter() - t_stop < args.drain_timeout:
        got = web_received(port).get("geo-pings", 0) - base
        if got >= sent:
            drained = time.perf_counter() - t_stop
            break
        time.sleep(0.2)
    if prof is not None:
        prof.wait()
    if drained is not None:
        while time.perf_counter() - t_stop < args.drain_timeout:
            if group_lag(settings, ["crossing-cells", "crossing-pairs"] + list(INPUTS)) == 0:
                settled = time.perf_counter() - t_stop
                break
            time.sleep(0.5)
    else:
        print(f"    NOT drained within {args.drain_timeout:.0f} s: {sent - got} pings still not received")
    time.sleep(2)
    stop.set()
    seen = results.get(timeout=120)
    listener.join(30)

    first: dict[str, tuple[float, float]] = {}
    for user, other, arrival, emitted, *_ in seen:
        pid = user.rsplit("-", 1)[0]
        if pid not in sent_b or other.rsplit("-", 1)[0] != pid:
            continue
        em = parse_ts(emitted) if emitted else float("nan")
        if pid not in first or arrival < first[pid][0]:
            first[pid] = (arrival, em)
    lat = [first[p][0] - sent_b[p] for p in first]
    proc_lat = [first[p][1] - sent_b[p] for p in first]
    foreign_recs = [r for r in seen if r[0].rsplit("-", 1)[0] != r[1].rsplit("-", 1)[0]]
    foreign = len(foreign_recs)
    for r in foreign_recs[:6]:
        print(f"    crossing between users of different pairs: {r[0]} x {r[1]} ts {r[4]} place {r[5]} band {r[6]}; "
              f"spots {spots.get(r[0].rsplit('-', 1)[0])} {spots.get(r[1].rsplit('-', 1)[0])}")
    return {
        "rate": rate, "seconds": seconds, "sent": sent, "achieved_rate": sent / t_prod, "pairs": len(sent_b),
        "found": len(first), "foreign": foreign, "lat": lat, "proc_lat": proc_lat, "drained": drained,
        "settled": settled, "left": sent - got,
        "backlog": backlog_samples, "load": ld, "stages": stages,
    }


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pings", type=int, default=100_000, help="backlog size (geo-pings); 0 skips (a)")
    ap.add_argument("--rate", default="2000", help="pings/s of the latency phase; comma-separated for several")
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--raw-rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=900.0, help="per wait, seconds")
    ap.add_argument("--profile-seconds", type=int, default=0, help="py-spy the worker during the backlog drain")
    ap.add_argument("--profile-phase", choices=["backlog", "latency"], default="backlog")
    ap.add_argument("--profile-out", default="/tmp/crosspaths-worker-profile.txt")
    ap.add_argument("--drain-timeout", type=float, default=300.0,
                    help="after each latency phase, how long to wait for the worker to catch up")
    args = ap.parse_args()
    args.grid_base = 0

    from streams.tools.demo import start_worker, stop_worker
    from streams.topics import create_topics

    run = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    port = free_port()
    settings = Settings(topic_prefix=f"bench-stream-{run}.", app_id=f"bench-stream-{run}", web_port=port)
    print(f"run {run}: bootstrap {settings.bootstrap_servers}, prefix {settings.topic_prefix}, "
          f"{settings.partitions} partitions, load avg {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    create_topics(settings)
    log = Path(settings.home) / "logs" / f"bench-stream-{run}.log"
    out: dict = {}
    proc = None
    lat_results = []
    try:
        if args.pings > 0:
            proc, prof = run_backlog(settings, args, port, log, out)
            if prof is not None:
                prof.wait(args.profile_seconds + 60)
        else:
            proc = start_worker(settings, port, log)
            out["worker_pid"] = proc.pid
        if not out.get("timeout"):
            for rate in [int(r) for r in args.rate.split(",") if r.strip()]:
                print(f"(b) latency at {rate} pings/s for {args.latency_seconds:.0f} s ...", flush=True)
                res = run_latency(settings, rate, args.latency_seconds, port, proc.pid, args)
                lat_results.append(res)
                print(f"    sent {res['sent']} ({res['achieved_rate']:,.0f}/s), crossings for {res['found']}/"
                      f"{res['pairs']} pairs; not yet received each second {[b for _, _, b in res['backlog']]}; "
                      f"drained {res['drained']} s after the producer stopped; {res['load'].describe()}")
        hwm, rss = _vm(proc.pid, "VmHWM"), _vm(proc.pid, "VmRSS")
    finally:
        proc = proc or out.get("proc")  # also when run_backlog raised
        if proc is not None:
            stop_worker(proc)

    # --------------------------------------------------------------- summary
    rows = []
    if "produced" in out:
        p = out["produced"]
        pings = p.get("geo-pings", 0)
        total = sum(p.values())
        raw = statistics.median(out["raw"])
        rows.append(("(a) backlog produced", ", ".join(f"{n:,} {t}" for t, n in p.items())))
        rows.append(("(a) raw aiokafka consume of geo-pings", f"{raw:,.0f} msg/s (rounds: " +
                     ", ".join(f"{r:,.0f}" for r in out["raw"]) + ")"))
        if not out.get("timeout"):
            drain = out["t_done"] - out["t_first"]
            rows.append(("(a) worker start -> web port answers", f"{out['t_web'] - out['t_launch']:.1f} s"))
            rows.append(("(a) worker start -> first message counted", f"{out['t_first'] - out['t_launch']:.1f} s"))
            rows.append(("(a) first -> all received (ingest counters)",
                         f"{drain:.1f} s -> {pings / drain:,.0f} pings/s ({total / drain:,.0f} msgs/s all inputs)"))
            rows.append(("(a) pipeline / raw consume (pings/s ratio)", f"{pings / drain / raw:.4f}  (target >= 0.5)"))
            if out["t_lag"]:
                full = out["t_lag"] - out["t_first"]
                rows.append(("(a) first -> no group lag on any topic (all stages)",
                             f"{full:.1f} s -> {pings / full:,.0f} pings/s, ratio {pings / full / raw:.4f} "
                             "(committed offsets; +<=1 s commit interval)"))
                rows.append(("(a) worker loop time by stage (until no lag)", out["stages"]))
            rows.append(("(a) counters via read_counters (changelog)",
                         ("all received" if out["changelog_ok"] else "NOT all received") +
                         f" {out['changelog_wait']:.1f} s after the group had no lag, " +
                         ("reconcile" if all(c["reconciles"] for c in out["counters"].values()) else "DO NOT reconcile")))
            rows.append(("(a) load during the drain", out["drain_load"].describe()))
        else:
            rows.append(("(a) pipeline", "TIMED OUT"))
    for r in lat_results:
        lat = r["lat"]
        name = f"(b) {r['rate']:,}/s for {r['seconds']:.0f} s"
        rows.append((name + ": sent / achieved rate", f"{r['sent']:,} pings, {r['achieved_rate']:,.0f}/s, "
                                                      f"{r['pairs']:,} pairs"))
        rows.append((name + ": pairs with a crossing", f"{r['found']:,}/{r['pairs']:,}"
                                                       + (f" (+{r['foreign']} records across pairs)" if r['foreign'] else "")))
        if lat:
            # pairs whose crossing never arrived count as infinitely late (censored percentiles)
            full = lat + [float("inf")] * (r["pairs"] - r["found"])
            fmt = lambda x: "not delivered" if x == float("inf") else f"{x * 1e3:,.0f}"  # noqa: E731
            rows.append((name + ": ping -> crossing p50/p99/max",
                         f"{fmt(pct(full, .5))} / {fmt(pct(full, .99))} / {fmt(max(full))} ms"
                         + (f" (delivered only: {pct(lat, .5) * 1e3:,.0f} / {pct(lat, .99) * 1e3:,.0f} / "
                            f"{max(lat) * 1e3:,.0f} ms)" if r["found"] < r["pairs"] else "")))
            pl = [x for x in r["proc_lat"] if x == x]
            if pl:
                rows.append((name + ": ping -> emitted_at p50/p99",
                             f"{pct(pl, .5) * 1e3:,.0f} / {pct(pl, .99) * 1e3:,.0f} ms (worker clock, ms precision)"))
        peak = max((b for _, _, b in r["backlog"]), default=0)
        rows.append((name + ": worker backlog", f"peak {peak:,} pings not yet received; ingest drained "
                                               f"{r['drained']:.1f} s after producer stopped, no lag on crossing "
                                               f"stages after {r['settled'] or float('nan'):.1f} s"
                     if r["drained"] is not None else
                     f"peak {peak:,}; NOT drained: {r['left']:,} still not received {args.drain_timeout:.0f} s "
                     "after the producer stopped"))
        smp = r["backlog"]  # (t, sent, sent - received)
        if len(smp) >= 2:
            dt = max(1e-9, smp[-1][0] - smp[0][0])
            recv = ((smp[-1][1] - smp[-1][2]) - (smp[0][1] - smp[0][2])) / dt
            rows.append((name + ": while producing (from 1 s samples)",
                         f"backlog grew {(smp[-1][2] - smp[0][2]) / dt:,.0f} pings/s; worker received "
                         f"{recv:,.0f} pings/s"))
        rows.append((name + ": load", r["load"].describe()))
        rows.append((name + ": worker loop time by stage", r["stages"]))
    rows.append(("(c) worker peak RSS (VmHWM) / RSS at end", f"{hwm:.0f} / {rss:.0f} MiB"))
    rows.append(("bench process peak RSS", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"))
    print("\n== Streaming pipeline (one worker) ==")
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if args.profile_seconds and Path(args.profile_out).exists():
        print(f"\n== py-spy: top frames by inclusive share ({args.profile_out}) ==")
        for inc, own, frame in top_frames(args.profile_out, 25):
            print(f"  {inc * 100:5.1f}%  (self {own * 100:4.1f}%)  {frame}")


if __name__ == "__main__":
    main()
