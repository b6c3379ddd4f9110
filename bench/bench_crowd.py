"""A crowd through ONE streaming worker, with a city alongside (issue 15; not run in CI).

For each crowd size N (--sizes): N users within --radius m (default 150) of one spot (the Louvre's
courtyard) for --minutes of event time (30), one ping every --interval s (30) each, all consenting to
geolocation and crossings; plus the simulated city (streams.tools.simulator, --city-users people
around Paris, a ping a minute each) over the same event time. Everything goes through one
`crosspaths worker` on a local broker of the bench's own (--port, --home; started at the beginning,
stopped and deleted at the end), fresh topics and app id per size.

Event time is compressed: the run starts --minutes + 10 min in the past and the messages (crowd and
city merged in event-time order, every consent first) are produced

  --speed max   as fast as the worker takes them: at most --window seconds of its recent ingest rate
                ahead of what it has received (its /counters/ page, written twice a second), so
                the worker is always busy and the queue in front of it stays short;
  --speed X     at X times real time (10: the 30 minutes in 3).

Measured per N:
  wall        first crowd/city message produced -> the worker's group has no lag on any input or
              internal topic (every stage done; committed offsets, so up to ~1 s late), and its
              ratio to the crowd's event time (target for N = 5,000: >= 10x, i.e. <= 3 min)
  pings/s     crowd + city pings / wall
  RSS         the worker's peak RSS (VmHWM, /proc/<pid>/status; target <= 1 GB for N = 5,000)
  rec/u/h     crossing records (not tombstones) told to crowd users on `crossings`, per crowd user
              per hour of crowd; tombstones likewise; and pairs shown to crowd users at the end
              (what a consumer keeping the latest record per key shows) -- should not grow with N
  latency     for city pairs (neither user in the crowd): the first record of the pair on
              `crossings` (wall-clock arrival, read by a separate process) minus the produce time of
              the pair's later ping (the ping whose ts is the record's ts); p50 / p99 / max
              (target p99 <= 1 s) of the pairs whose later ping is not routed to one of the crowd's
              partition keys (those at the crowd's keys apart), and split by where the later ping
              falls in its 300 s slice (a crowd's first slice sends, then withdraws, its first people's
              crossings: the spike is there). With --speed max the latency includes the ~1 s queue the
              producer keeps in front of the worker.
  diagnosis   the worker's busiest ~2 s per stage (its /batches/ page), crowd records on `crossings`
              per second, warnings of the worker log (e.g. Faust's commit timer overlapping)

--check-size N (default 300; 0: none) first runs one size and checks it: the final record under
every key of `crossings` equals the batch reference (geo.crossings.detect_crossings +
latest_per_pair with the worker's own settings, recomputed from the pings the worker routed:
streams.tools.report.check_crossings, as `crosspaths crossings verify` does).

Usage (results in bench/RESULTS.md):
    .venv/bin/python bench/bench_crowd.py                                  # N = 5,000 as fast as it goes (+ check at 300)
    .venv/bin/python bench/bench_crowd.py --sizes 100,500,2000,5000,20000 --check-size 0
    .venv/bin/python bench/bench_crowd.py --sizes 5000 --speed 10 --check-size 0   # paced at 10x real time
    ... --profile-seconds 30     # py-spy the worker 10 s into each run (if py-spy is installed)
Progress goes to stderr, the table to stdout. bench/crowd_burst.py replays the same crowd through the
core objects in-process (no Kafka) to split what it costs.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import _cpu_jiffies  # noqa: E402
from bench_streaming import (_proc_cpu_s, _vm, consumer_at_end, free_port, pct, stage_split,  # noqa: E402
                             start_profile, top_frames, web_batches)
from streams.settings import Settings  # noqa: E402

CROWD_SPOT = (48.8606, 2.3376)  # the Louvre's courtyard (also bench/scenarios.py's crowd)
M_PER_DEG_LAT = 111_320.0
CROWD_PREFIX = "crowd-"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """One run's messages: consents first, then crowd and city pings merged in event-time order."""

    crowd_users: int
    city_users: int
    start: float  # event time of the first ping
    minutes: float
    consents: list[tuple[bytes, bytes]]
    city: list[tuple[float, bytes, bytes, int]]  # (ts, key, value, ts_ms) in event-time order
    city_where: dict[tuple[str, int], tuple[float, float]]  # (user, ts_ms) -> (lat, lon)
    crowd_args: tuple
    crowd_pings: int
    city_crossing_users: set[str] = field(default_factory=set)

    def pings(self):
        """(ts, kind, key, value, ts_ms) in event-time order; kind 0 city, 1 crowd."""
        city = ((ts, 0, key, value, ms) for ts, key, value, ms in self.city)
        return heapq.merge(city, crowd_pings(*self.crowd_args), key=lambda m: m[0])

    @property
    def total_pings(self) -> int:
        return self.crowd_pings + len(self.city)


def consent(user: str, updated_at: float, partner: bool = False) -> tuple[bytes, bytes]:
    from schemas.timefmt import format_ts

    return user.encode(), json.dumps({"user_id": user, "updated_at": format_ts(updated_at), "geolocation": True,
                                      "crossings": True, "partner_sharing": partner, "deleted": False},
                                     separators=(",", ":")).encode()


def crowd_pings(n: int, spot: tuple[float, float], radius_m: float, start: float, minutes: float, interval_s: float,
                seed: int):
    """The crowd's pings in event-time order: (ts, 1, key, value, ts_ms).

    Each of the n users stands at a point drawn uniformly in the disc of radius_m around the spot
    and pings every interval_s (a phase of its own), each fix 5 m of noise around its point.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    r = radius_m * np.sqrt(rng.uniform(0, 1, n))
    theta = rng.uniform(0, 2 * math.pi, n)
    m_per_deg_lon = M_PER_DEG_LAT * math.cos(math.radians(spot[0]))
    lat0 = spot[0] + r * np.sin(theta) / M_PER_DEG_LAT
    lon0 = spot[1] + r * np.cos(theta) / m_per_deg_lon
    phase = rng.uniform(0, interval_s, n)
    order = np.argsort(phase, kind="stable")
    names = [f"{CROWD_PREFIX}{i:06d}" for i in range(n)]
    steps = int(minutes * 60 // interval_s)
    for k in range(steps):
        jlat = rng.normal(0, 5, n) / M_PER_DEG_LAT
        jlon = rng.normal(0, 5, n) / m_per_deg_lon
        for i in order.tolist():
            ts = start + k * interval_s + float(phase[i])
            ms = int(ts * 1000)
            user = names[i]
            yield (ms / 1000.0, 1, user.encode(),
                   (f'{{"user_id":"{user}","ts":{ms},"lat":{lat0[i] + jlat[i]:.6f},"lon":{lon0[i] + jlon[i]:.6f},'
                    f'"accuracy_m":10}}').encode(), ms)


def crowd_keys(spot: tuple[float, float], radius_m: float) -> set[str]:
    """Every partition key (home or guest) a fix within radius_m + 25 m of the spot is routed to."""
    import numpy as np

    from geo.crossings import CrossingParams, route_many

    reach = radius_m + 25.0
    g = np.arange(-reach, reach + 1, 10.0)
    x, y = np.meshgrid(g, g)
    inside = x ** 2 + y ** 2 <= reach ** 2
    lat = spot[0] + y[inside] / M_PER_DEG_LAT
    lon = spot[1] + x[inside] / (M_PER_DEG_LAT * math.cos(math.radians(spot[0])))
    return set(route_many(lat, lon, None, CrossingParams()).keys)


def near_crowd(lat: float, lon: float, keys: set[str]) -> bool:
    """Whether a fix at (lat, lon) is routed to one of the crowd's keys (its pairs may be judged there)."""
    from geo.crossings import CrossingParams, route_many

    return not keys.isdisjoint(route_many([lat], [lon], None, CrossingParams()).keys)


def build_workload(n: int, args, start: float) -> Workload:
    """Consents of everyone and the city's pings (the crowd's are generated as they are sent)."""
    from schemas.timefmt import parse_ts
    from streams.tools.simulator import SimulationParams, simulate_city

    consents = [consent(f"{CROWD_PREFIX}{i:06d}", start - 86400) for i in range(n)]
    city: list[tuple[float, bytes, bytes, int]] = []
    where: dict[tuple[str, int], tuple[float, float]] = {}
    city_ok: set[str] = set()
    if args.city_users >= 2:
        params = SimulationParams(users=args.city_users, hours=args.minutes / 60, start=start, seed=args.seed,
                                  malformed_share=0.0, opt_out_mid_run=0, opt_in_mid_run=0, deletions_mid_run=0)
        for topic, key, value in simulate_city(params):
            if topic == "consents":
                consents.append((key, value))
                doc = json.loads(value)
                if doc.get("geolocation") and doc.get("crossings"):
                    city_ok.add(doc["user_id"])
            elif topic == "geo-pings":
                doc = json.loads(value)
                ts = parse_ts(doc["ts"])
                city.append((ts, key, value, round(ts * 1000)))
                where[(doc["user_id"], round(ts * 1000))] = (doc["lat"], doc["lon"])
    steps = int(args.minutes * 60 // args.interval)
    return Workload(n, args.city_users, start, args.minutes, consents, city, where,
                    (n, args.spot, args.radius, start, args.minutes, args.interval, args.seed + n), n * steps, city_ok)


# --------------------------------------------------------------------------- the crossings topic, read aside
def crossings_listener(bootstrap: str, topic: str, ready, stop, results) -> None:
    """Child process: every record of `crossings` from the end at start, summarized for the bench."""
    asyncio.run(_listen(bootstrap, topic, ready, stop, results))


async def _listen(bootstrap: str, topic: str, ready, stop, results) -> None:
    import orjson

    consumer = await consumer_at_end(bootstrap, topic, "bench-crowd-crossings",
                                     max_partition_fetch_bytes=4 * 1024 * 1024)
    ready.set()
    crowd_key = CROWD_PREFIX.encode()
    city_first: dict[tuple[str, str], tuple[str, float]] = {}  # city pair -> (ts of its first record, arrival)
    final: dict[bytes, bool] = {}  # key -> has a record (False: tombstoned) -- for keys of crowd users
    told = tombstones = mixed = records = 0
    per_second: dict[int, int] = {}  # int(arrival wall-clock) -> records to or about crowd users
    stop_at = None
    while True:
        batch = await consumer.getmany(timeout_ms=50, max_records=20_000)
        now = time.time()
        for recs in batch.values():
            for rec in recs:
                records += 1
                key = rec.key
                user, _, other = key.partition(b"|")
                in_crowd = user.startswith(crowd_key)
                if in_crowd or other.startswith(crowd_key):
                    per_second[int(now)] = per_second.get(int(now), 0) + 1
                    if in_crowd:
                        final[key] = rec.value is not None
                        if rec.value is None:
                            tombstones += 1
                        else:
                            told += 1
                    if not (in_crowd and other.startswith(crowd_key)):
                        mixed += 1
                    continue
                if rec.value is None:
                    continue
                a, b = user.decode(), other.decode()
                pair = (a, b) if a < b else (b, a)
                if pair not in city_first:
                    city_first[pair] = (orjson.loads(rec.value)["ts"], now)
        if stop.is_set():
            stop_at = stop_at or time.monotonic()
            if time.monotonic() - stop_at > 3 and not batch:
                break
    await consumer.stop()
    shown = sum(final.values())
    results.put({"records": records, "told": told, "tombstones": tombstones, "mixed": mixed,
                 "shown": shown, "crowd_keys": len(final), "city_first": list(city_first.items()),
                 "per_second": per_second})


# --------------------------------------------------------------------------- the worker, seen from outside
def worker_get(port: int, page: str, timeout: float = 5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=timeout) as r:
        return r.read()


def received(port: int) -> dict[str, int]:
    """Messages received per input topic (suffix), from the worker's /counters/ page."""
    out: dict[str, int] = {}
    for key, counts in json.loads(worker_get(port, "counters/")).items():
        topic = key.rsplit("/", 1)[0]
        for name in ("geo-pings", "consents", "connection-logs"):
            if topic.endswith("." + name) or topic == name:
                out[name] = out.get(name, 0) + int((counts or {}).get("received", 0))
    return out


def internal_lag(port: int) -> dict[str, int]:
    """The worker's consumer lag per topic suffix (its /metrics page; committed offsets)."""
    lag: dict[str, int] = {}
    for line in worker_get(port, "metrics").decode().splitlines():
        if line.startswith("crosspaths_consumer_lag{"):
            labels, value = line.rsplit(" ", 1)
            topic = labels.split('topic="', 1)[1].split('"', 1)[0]
            name = topic.rsplit(".", 1)[-1]
            lag[name] = lag.get(name, 0) + int(float(value))
    return lag


class WorkerWatch:
    """The worker's RSS and CPU, sampled."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_rss = 0.0
        self.cpu0 = _proc_cpu_s(pid)
        self.busy0, self.total0 = _cpu_jiffies()
        self.t0 = time.perf_counter()

    def sample(self) -> float:
        rss = _vm(self.pid, "VmRSS")
        self.peak_rss = max(self.peak_rss, rss, _vm(self.pid, "VmHWM"))
        return rss

    def cpu(self) -> tuple[float, float]:
        """(worker cores, machine busy cores) since the start."""
        wall = time.perf_counter() - self.t0
        b, t = _cpu_jiffies()
        return (_proc_cpu_s(self.pid) - self.cpu0) / wall, (b - self.busy0) / max(1, t - self.total0) * (os.cpu_count() or 1)


# --------------------------------------------------------------------------- one run
async def produce(settings: Settings, wl: Workload, args, port: int, watch: WorkerWatch, profile_at) -> dict:
    """Send the consents, wait until they are counted, then the pings as --speed says; returns timings."""
    from aiokafka import AIOKafkaProducer
    from kafka.partitioner.default import murmur2

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks=1, linger_ms=0,
                                max_batch_size=1024 * 1024, client_id="bench-crowd")
    await producer.start()
    out: dict = {"city_sent": {}, "backlog_max": 0, "internal_max": 0, "busy": []}
    try:
        parts_cache: dict[str, list[int]] = {}

        async def send(topic: str, msgs) -> None:
            """msgs: (key, value, timestamp_ms) -> one batch per partition, Kafka's default partitioner."""
            if topic not in parts_cache:
                parts_cache[topic] = sorted(await producer.partitions_for(topic))
            parts = parts_cache[topic]
            batches: dict[int, object] = {}
            for key, value in msgs:
                p = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
                batch = batches.get(p)
                if batch is None:
                    batch = batches[p] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                    batch.close()
                    await producer.send_batch(batch, topic, partition=p)
                    batch = batches[p] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            for p, batch in batches.items():
                batch.close()
                await producer.send_batch(batch, topic, partition=p)

        await send(settings.topic("consents"), wl.consents)
        await producer.flush()
        t_c = time.perf_counter()
        while received(port).get("consents", 0) < len(wl.consents):
            if time.perf_counter() - t_c > args.timeout:
                raise RuntimeError("the worker did not count the consents in time")
            await asyncio.sleep(0.2)
        say(f"  {len(wl.consents):,} consents counted in {time.perf_counter() - t_c:.1f} s")

        topic = settings.topic("geo-pings")
        pings = wl.pings()
        nxt = next(pings, None)
        total = wl.total_pings
        sent = crowd_sent = 0
        base = received(port).get("geo-pings", 0)
        got, got_at = 0, time.perf_counter()
        rate = 0.0  # recent ingest rate (pings/s)
        hist: list[tuple[float, int]] = []
        city_sent = out["city_sent"]
        speed = None if args.speed == "max" else float(args.speed)
        profile_after = args.profile_after
        if args.profile_slice and speed:  # 1 s of wall before the k-th slice boundary of event time
            slice_s = max(1.0, settings.crossing_window_s)
            boundary = (wl.start // slice_s + args.profile_slice) * slice_s
            profile_after = (boundary - wl.start) / speed - 1.0
        w0 = time.perf_counter()
        out["t0"] = w0
        last_poll = last_print = last_lag = last_batches = 0.0
        busy = out["busy"] = []  # (perf_counter, the worker's /batches/ page)
        internal = {}
        while nxt is not None:
            now = time.perf_counter()
            if now - last_poll >= 0.1:
                last_poll = now
                got = (await asyncio.to_thread(received, port)).get("geo-pings", 0) - base
                hist.append((now, got))
                while len(hist) > 2 and hist[0][0] < now - 3:
                    hist.pop(0)
                if hist[-1][0] > hist[0][0]:
                    rate = (hist[-1][1] - hist[0][1]) / (hist[-1][0] - hist[0][0])
                out["backlog_max"] = max(out["backlog_max"], sent - got)
                watch.sample()
            if now - last_batches >= 0.5:
                last_batches = now
                try:
                    busy.append((now, await asyncio.to_thread(web_batches, port)))
                except OSError:
                    pass
            if now - last_lag >= 1.0:
                last_lag = now
                try:
                    internal = await asyncio.to_thread(internal_lag, port)
                except OSError:
                    internal = {}
                out["internal_max"] = max(out["internal_max"],
                                          internal.get("crossing-cells", 0) + internal.get("crossing-pairs", 0))
            if speed is None:
                budget = got + max(args.min_window, rate * args.window) - sent
                limit_ts = math.inf
            else:
                budget = math.inf
                limit_ts = wl.start + speed * (now - w0)
            chunk = []
            while nxt is not None and budget > 0 and nxt[0] <= limit_ts and len(chunk) < 20_000:
                chunk.append(nxt)
                budget -= 1
                nxt = next(pings, None)
            if chunk:
                await send(topic, [(m[2], m[3]) for m in chunk])
                t_sent = time.time()
                for ts, kind, key, _, ms in chunk:
                    if kind == 0:
                        city_sent[(key.decode(), ms)] = t_sent
                    else:
                        crowd_sent += 1
                sent += len(chunk)
            if profile_at is not None and now - w0 >= profile_after:
                profile_at()
                profile_at = None
            if now - last_print >= 5:
                last_print = now
                rss = watch.sample()
                ev = (chunk[-1][0] if chunk else (nxt[0] if nxt else wl.start)) - wl.start
                say(f"  {now - w0:6.1f} s: sent {sent:,}/{total:,} pings (event time +{ev / 60:4.1f} min), "
                    f"received {got:,} ({rate:,.0f}/s), backlog {sent - got:,}, internal lag "
                    f"{internal.get('crossing-cells', 0)}/{internal.get('crossing-pairs', 0)} msgs, RSS {rss:,.0f} MiB")
            await asyncio.sleep(0.005 if chunk else 0.02)
        await producer.flush()
        out.update(t_sent=time.perf_counter(), sent=sent, crowd_sent=crowd_sent, base=base)
    finally:
        await producer.stop()
    return out


def wait_done(settings: Settings, port: int, prod: dict, watch: WorkerWatch, args) -> tuple[float | None, float | None]:
    """(all pings received, no group lag on any topic) as perf_counter times; None if not within --timeout."""
    from streams.tools.demo import PIPELINE_TOPICS
    from streams.tools.kafkaio import group_lag

    t_recv = t_done = None
    deadline = time.perf_counter() + args.timeout
    topics = [settings.topic(n) for n in PIPELINE_TOPICS]
    last_print = 0.0
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        if t_recv is None:
            got = received(port).get("geo-pings", 0) - prod["base"]
            if got >= prod["sent"]:
                t_recv = now
        if t_recv is not None:
            lag = group_lag(settings, settings.app_id, topics)
            if not sum(lag.values()):
                t_done = time.perf_counter()
                break
        watch.sample()
        if now - last_print >= 5:
            last_print = now
            say(f"  {now - prod['t0']:6.1f} s: producer done; "
                + ("waiting for ingest" if t_recv is None else
                   "waiting for the stages: lag " + ", ".join(f"{t.rsplit('.', 1)[-1]} {n}" for t, n in lag.items() if n)))
        time.sleep(0.25 if t_recv is None else 0.5)
    return t_recv, t_done


@dataclass
class Result:
    n: int
    speed: str
    crowd_pings: int
    city_pings: int
    city_users: int
    wall: float | None
    ingest_wall: float | None
    peak_rss: float
    told: int
    tombstones: int
    shown: int
    mixed: int
    latencies: list[float]
    city_pairs: int
    backlog_max: int
    internal_max: int
    worker_cores: float
    machine_cores: float
    load: tuple[float, float]
    stages: str
    crowds: dict
    check: str | None = None
    minutes: float = 30.0
    drain: float | None = None  # last ping produced -> no lag
    lat_slice_start: list[float] = field(default_factory=list)  # city pairs whose later ping is in a slice's first 60 s
    lat_slice_rest: list[float] = field(default_factory=list)
    crowd_peak: int = 0  # records to or about crowd users arriving on `crossings` in the busiest second
    crowd_before_slow: list[int] = field(default_factory=list)  # such records in the 5 s before each slowest 1 %'s arrival
    crowd_before_all: list[int] = field(default_factory=list)  # ... before every timed pair's arrival
    log_warnings: list[str] = field(default_factory=list)
    busiest: dict[str, float] = field(default_factory=dict)  # stage -> its largest share of any ~2 s of wall
    lat_near: list[float] = field(default_factory=list)  # city pairs at the crowd's keys (not in `latencies`)
    crowd_keys: int = 0

    @property
    def ratio(self) -> float:
        return self.minutes * 60 / self.wall if self.wall else float("nan")

    def per_user_hour(self, count: int) -> float:
        return count / self.n / (self.minutes / 60) if self.n else float("nan")


def run_size(base: Settings, n: int, args, check: bool = False) -> Result:
    from streams.tools.demo import start_worker, stop_worker
    from streams.topics import create_topics

    tag = uuid.uuid4().hex[:6]
    settings = base.model_copy(update={"topic_prefix": f"crowd{n}-{tag}.", "app_id": f"crosspaths-crowd{n}-{tag}",
                                       "web_port": args.web_port})
    start = (time.time() // 60) * 60 - (args.minutes + 10) * 60
    t_gen = time.perf_counter()
    wl = build_workload(n, args, start)
    say(f"== N = {n:,}: {wl.crowd_pings:,} crowd pings + {len(wl.city):,} city pings ({args.city_users} people), "
        f"{len(wl.consents):,} consents; event time from {time.strftime('%H:%M', time.gmtime(start))} UTC "
        f"for {args.minutes:g} min; speed {args.speed} (workload built in {time.perf_counter() - t_gen:.1f} s)")
    create_topics(settings)
    log = args.logs / f"{settings.app_id}.log"
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    listener = ctx.Process(target=crossings_listener, daemon=True,
                           args=(settings.bootstrap_servers, settings.topic("crossings"), ready, stop, results))
    listener.start()
    if not ready.wait(60):
        raise RuntimeError("the crossings listener did not start")
    proc = start_worker(settings, args.web_port, log)
    say(f"  worker pid {proc.pid} on :{args.web_port}, log {log}")
    watch = WorkerWatch(proc.pid)
    prof = {}

    def profile_now():
        prof["p"] = start_profile(proc.pid, args.profile_seconds, f"{args.profile_out}.{n}")

    try:
        load0 = os.getloadavg()[0]
        batches0 = web_batches(args.web_port)
        prod = asyncio.run(produce(settings, wl, args, args.web_port, watch,
                                   profile_now if args.profile_seconds else None))
        t_recv, t_done = wait_done(settings, args.web_port, prod, watch, args)
        t_end = t_done or time.perf_counter()
        stages = stage_split(batches0, web_batches(args.web_port), t_end - prod["t0"])
        worker_cores, machine_cores = watch.cpu()
        load1 = os.getloadavg()[0]
        watch.sample()
        try:
            state = json.loads(worker_get(args.web_port, "state/"))
        except OSError:
            state = {}
        crowds = {"live_pings": sum(v.get("live_pings", 0) for v in state.get("crossing-cells", {}).values()),
                  "detector_MiB": sum(v.get("memory_bytes", 0) for v in state.get("crossing-cells", {}).values()) / 2**20,
                  "pairs_held": sum(v.get("pairs", 0) for v in state.get("crossing-pairs", {}).values())}
        if t_done is None:
            say(f"  NOT DONE within {args.timeout:.0f} s after the producer finished")
        time.sleep(2)
        stop.set()
        seen = results.get(timeout=300)
        listener.join(30)
        if "p" in prof and prof["p"] is not None:
            prof["p"].wait(args.profile_seconds + 60)
    finally:
        stop.set()
        stop_worker(proc)
        if listener.is_alive():
            listener.terminate()
    from schemas.timefmt import parse_ts

    slice_s = max(1.0, settings.crossing_window_s)  # the crowd rule's slices (geo.crossings.model.slice_s)
    timed = []  # (latency, phase of the later ping in its slice, arrival wall-clock), away from the crowd's keys
    near = []  # latencies of city pairs whose later ping is routed to one of the crowd's keys
    city_sent = prod["city_sent"]
    ckeys = crowd_keys(args.spot, args.radius) if n else set()
    for (a, b), (ts, arrival) in seen["city_first"]:
        t = parse_ts(ts)
        ms = round(t * 1000)
        sent_at, later = max((city_sent.get((u, ms), -1.0), u) for u in (a, b))
        if sent_at > 0:
            if ckeys and near_crowd(*wl.city_where[(later, ms)], ckeys):
                near.append(arrival - sent_at)
            else:
                timed.append((arrival - sent_at, t % slice_s, arrival))
    per_second = seen["per_second"]

    def crowd_before(arrival: float, span: int = 5) -> int:
        return sum(per_second.get(int(arrival) - k, 0) for k in range(span + 1))

    busiest = busiest_stages(prod["busy"])
    slow = sorted(timed, reverse=True)[: max(1, len(timed) // 100)] if timed else []
    res = Result(n=n, speed=args.speed, crowd_pings=wl.crowd_pings, city_pings=len(wl.city), city_users=args.city_users,
                 wall=None if t_done is None else t_done - prod["t0"],
                 ingest_wall=None if t_recv is None else t_recv - prod["t0"], peak_rss=watch.peak_rss,
                 told=seen["told"], tombstones=seen["tombstones"], shown=seen["shown"], mixed=seen["mixed"],
                 latencies=[x[0] for x in timed], city_pairs=len(seen["city_first"]), backlog_max=prod["backlog_max"],
                 internal_max=prod["internal_max"], worker_cores=worker_cores, machine_cores=machine_cores,
                 load=(load0, load1), stages=stages, crowds=crowds, minutes=args.minutes,
                 drain=None if t_done is None else t_done - prod["t_sent"],
                 lat_slice_start=[x[0] for x in timed if x[1] < 60], lat_slice_rest=[x[0] for x in timed if x[1] >= 60],
                 crowd_peak=max(per_second.values(), default=0),
                 crowd_before_slow=sorted(crowd_before(x[2]) for x in slow),
                 crowd_before_all=sorted(crowd_before(x[2]) for x in timed),
                 log_warnings=log_warnings(log), busiest=busiest, lat_near=near, crowd_keys=len(ckeys))
    if check:
        from streams.tools.report import check_crossings, format_crossing_check

        t_c = time.perf_counter()
        res.check = format_crossing_check(check_crossings(settings))
        say(f"  check ({time.perf_counter() - t_c:.0f} s): {res.check}")
    say("  " + describe(res).replace("\n", "\n  "))
    if args.profile_seconds and Path(f"{args.profile_out}.{n}").exists():
        say(f"  py-spy, top frames by inclusive share ({args.profile_out}.{n}):")
        for inc, own, frame in top_frames(f"{args.profile_out}.{n}", 25):
            say(f"    {inc * 100:5.1f}%  (self {own * 100:4.1f}%)  {frame}")
    return res


def busiest_stages(samples: list[tuple[float, dict]], span: float = 2.0) -> dict[str, float]:
    """Per stage (batch topic), the largest share of wall-clock time it took over any ~span s of the run."""
    out: dict[str, float] = {}
    j = 0
    for i, (t1, b1) in enumerate(samples):
        while j < i and t1 - samples[j + 1][0] >= span:
            j += 1
        t0, b0 = samples[j]
        if t1 - t0 < span * 0.75:
            continue
        for topic, st in b1.items():
            name = topic.rsplit(".", 1)[-1]
            share = (st["busy_s"] - b0.get(topic, {"busy_s": 0.0})["busy_s"]) / (t1 - t0)
            out[name] = max(out.get(name, 0.0), share)
    return out


def log_warnings(log: Path) -> list[str]:
    """Warning and error lines of a worker log, repeats counted."""
    from collections import Counter

    seen: Counter = Counter()
    try:
        for line in log.read_text(errors="replace").splitlines():
            if "WARNING" in line or "ERROR" in line:
                seen[line.split("]", 2)[-1].strip()[:160]] += 1
    except OSError:
        return []
    return [f"{n}x {text}" for text, n in seen.most_common()]


def fmt_ms(x: float) -> str:
    return f"{x * 1e3:,.0f}" if x == x else "-"


def describe(r: Result) -> str:
    lat = r.latencies
    pings = r.crowd_pings + r.city_pings
    lines = [
        f"wall {r.wall:.1f} s" if r.wall else "wall: NOT DONE",
        f"(ingest done at {r.ingest_wall:.1f} s)" if r.ingest_wall else "",
        f"= {r.ratio:.1f}x real time; {pings / r.wall:,.0f} pings/s" if r.wall else "",
        f"; peak RSS {r.peak_rss:,.0f} MiB; worker {r.worker_cores:.2f} cores, machine {r.machine_cores:.2f}"
        f" busy, load {r.load[0]:.2f} -> {r.load[1]:.2f}\n",
        f"crowd users told {r.told:,} records + {r.tombstones:,} tombstones "
        f"({r.per_user_hour(r.told):,.1f} + {r.per_user_hour(r.tombstones):,.1f} per user per hour), "
        f"{r.shown:,} shown at the end ({r.shown / r.n if r.n else 0:.2f} per user); {r.mixed:,} crowd-city records\n",
        f"city pairs away from the crowd's {r.crowd_keys} partition keys: {len(lat):,} timed of {r.city_pairs:,}; "
        f"ping -> crossing p50 / p99 / max "
        f"{fmt_ms(pct(lat, .5))} / {fmt_ms(pct(lat, .99))} / {fmt_ms(max(lat) if lat else float('nan'))} ms; "
        f"at the crowd's keys: {len(r.lat_near):,} pairs, p50 / p99 / max {fmt_ms(pct(r.lat_near, .5))} / "
        f"{fmt_ms(pct(r.lat_near, .99))} / {fmt_ms(max(r.lat_near) if r.lat_near else float('nan'))} ms\n",
        f"city p99 by the later ping's place in its 300 s slice: first 60 s {fmt_ms(pct(r.lat_slice_start, .99))} ms "
        f"({len(r.lat_slice_start):,} pairs), rest {fmt_ms(pct(r.lat_slice_rest, .99))} ms ({len(r.lat_slice_rest):,}); "
        f"crowd records on `crossings` in the 5 s before arrival: median {pct(r.crowd_before_all, .5):,} over all timed "
        f"pairs, {pct(r.crowd_before_slow, .5):,} over the slowest 1 %; busiest second {r.crowd_peak:,}\n",
        f"drain after the last ping {r.drain:.1f} s; " if r.drain is not None else "",
        f"backlog max {r.backlog_max:,} pings; internal lag max {r.internal_max:,} msgs; at the end {r.crowds}\n",
        f"worker loop by stage: {r.stages}\n",
        "busiest ~2 s per stage (share of wall): " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(r.busiest.items())),
        ("\nworker log: " + " | ".join(r.log_warnings[:8])) if r.log_warnings else "",
    ]
    return " ".join(x for x in lines if x).replace("\n ", "\n")


def table(results: list[Result]) -> str:
    head = ["N", "speed", "crowd + city pings", "wall s (drain after last ping)", "x real time", "pings/s", "peak RSS MiB",
            "records / crowd user / h (+ tombstones)", "shown / crowd user", "city pairs timed (at crowd keys)",
            "city p50 / p99 ms (at crowd keys: p99)", "machine busy / load"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        pings = r.crowd_pings + r.city_pings
        lat = r.latencies
        rows.append("| " + " | ".join([
            f"{r.n:,}", r.speed, f"{r.crowd_pings:,} + {r.city_pings:,}",
            f"{r.wall:.1f} ({r.drain:.1f})" if r.wall else "NOT DONE", f"{r.ratio:.1f}" if r.wall else "-",
            f"{pings / r.wall:,.0f}" if r.wall else "-", f"{r.peak_rss:,.0f}",
            f"{r.per_user_hour(r.told):,.1f} (+{r.per_user_hour(r.tombstones):,.1f})", f"{r.shown / r.n:.2f}" if r.n else "-",
            f"{len(lat):,} ({len(r.lat_near):,})",
            f"{fmt_ms(pct(lat, .5))} / {fmt_ms(pct(lat, .99))} ({fmt_ms(pct(r.lat_near, .99))})",
            f"{r.machine_cores:.2f} / {r.load[0]:.1f}-{r.load[1]:.1f}"]) + " |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- main
def main() -> None:
    from streams.tools import broker

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000", help="crowd sizes, comma-separated")
    ap.add_argument("--check-size", type=int, default=300, help="a crowd size run first and checked against the "
                                                                "batch reference (0: none)")
    ap.add_argument("--speed", default="max", help="'max' (as fast as the worker takes it) or x real time, e.g. 10")
    ap.add_argument("--window", type=float, default=1.0, help="--speed max: seconds of the worker's recent ingest "
                                                              "rate produced ahead of what it has received")
    ap.add_argument("--min-window", type=int, default=2000, help="--speed max: pings ahead at least")
    ap.add_argument("--city-users", type=int, default=1000, help="people of the simulated city (0: no city)")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between two pings of a crowd user")
    ap.add_argument("--radius", type=float, default=150.0, help="metres around the spot")
    ap.add_argument("--spot", type=lambda s: tuple(float(x) for x in s.split(",")), default=CROWD_SPOT)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--port", type=int, default=49392, help="the bench broker's port (controller: port + 1)")
    ap.add_argument("--home", type=Path, default=Path("/tmp/crowd-home"))
    ap.add_argument("--web-port", type=int, default=0, help="the worker's web port (0: a free one)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the worker after producing")
    ap.add_argument("--logs", type=Path, default=Path("/tmp/crowd-logs"), help="the workers' logs (kept)")
    ap.add_argument("--keep-broker", action="store_true", help="leave the broker running with its data")
    ap.add_argument("--profile-seconds", type=int, default=0, help="py-spy the worker this long in each run")
    ap.add_argument("--profile-after", type=float, default=10.0, help="seconds into the run to start py-spy")
    ap.add_argument("--profile-slice", type=int, default=0,
                    help="with a numeric --speed: start py-spy 1 s before the k-th crowd-rule slice boundary instead")
    ap.add_argument("--profile-out", default="/tmp/crosspaths-crowd-profile.txt")
    args = ap.parse_args()
    if args.speed != "max":
        float(args.speed)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.web_port = args.web_port or free_port()

    from scenarios import ensure_home

    base = Settings(broker_port=args.port, controller_port=args.port + 1, bootstrap_servers=f"127.0.0.1:{args.port}",
                    home=args.home, topic_prefix="", app_id="crosspaths")
    say(f"bench_crowd: sizes {sizes}, check size {args.check_size}, city {args.city_users} people, speed "
        f"{args.speed}; {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"crowd_users (crowd rule) {base.crossing_crowd_users}")
    ensure_home(base)
    say(broker.reset(base))
    say(broker.start(base, timeout_s=180, quiet=True))
    results: list[Result] = []
    t0 = time.perf_counter()
    try:
        if args.check_size:
            results.append(run_size(base, args.check_size, args, check=True))
        for n in sizes:
            results.append(run_size(base, n, args))
    finally:
        if args.keep_broker:
            say(broker.stop(base))
        else:
            say(broker.reset(base))
            shutil.rmtree(args.home, ignore_errors=True)
    print(f"\n== Crowds through one worker ({time.perf_counter() - t0:.0f} s; crowd rule: more than "
          f"{base.crossing_crowd_users} people per partition key and 300 s slice) ==")
    print(table(results))
    for r in results:
        if r.check:
            print(f"\ncheck at N = {r.n:,}: {r.check}")
    print(f"\nbench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if any(r.check and "identical" not in r.check for r in results) or any(r.wall is None for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
