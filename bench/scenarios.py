"""Scenarios: one seeded city through the pipeline, fault-free and under faults, compared record by record.

Every scenario runs the same workload (the simulated city: --users for --hours, seed --seed, 1 %
malformed) on its own topics and app id, against a local broker of its own (started here on
--port, home --home, and stopped at the end). Every consent (the mid-run changes and deletions
included) is sent and counted before any ping or log, so that no consent changes while pings
flow: the consent gate applies the consent known when a ping arrives, so mid-run changes make the
outputs depend on how the consents and pings topics interleave (scenario `consents-mid-run`
measures that apart). Pings and logs are then produced at a steady pace over --pace seconds, in
event-time order, while the scenario's fault happens; then the runner waits until every input
message is counted and no input or internal topic has lag for a few seconds, reads the four output
topics from the beginning, as a consumer does, and prints one row:

  in        input messages produced and acknowledged (the scenario's own ones included)
  out       keys with a record at the end (a tombstone counts as none): crossings / partner-statistics /
            connection-statistics / erasure-receipts
  lost      keys with a record in the fault-free run and none in this one
  extra     keys with a record in this run and none in the fault-free one
  differ    keys whose final record differs from the fault-free run's (every field but emitted_at;
            receipts also without completed_at and the gone-by times, which are wall-clock times)
  dup       records a consumer receives again: the same key and content as an earlier record under
            that key (compared as in `differ`); `exact` of them equal it byte for byte
  corr      records that change the value under a key (a later record correcting or updating it)
  lag       the largest consumer lag seen (messages not yet committed, summed over inputs and internals)
  restarts  workers started again after dying (a kill -9 by the runner, or an exit on their own)
  uncounted pings and logs produced but missing from the ingest counters (negative: counted twice)

Scenarios (`all`: the first eight, each compared with the fault-free run of the same invocation;
several: comma-separated, e.g. `kill-9,rebalance,combined`, compared with one fault-free run):
  fault-free        one worker, no fault
  kill-9            one worker, killed (SIGKILL) at two random moments (seeded) and restarted at once
  broker-restart    the broker stopped and started again (same settings, its data kept) mid-run
  rebalance         one worker, two more join at 30 % of the run, leave (stopped) at 65 %
  combined          all of those in one run: a kill -9 of the one worker (seeded moment in 10-22 %), two
                    more join (30 %), a kill -9 of one of the three (seeded, 38-48 %), the broker restarted
                    (55 %), two workers leave (72 %)
  oversized         the largest message the broker accepts, twice on each input topic
  hostile           the hostile corpus (tests/hostile.py) on the input topics, mid-run
  crowd             --crowd users at one spot for 5 minutes, mid-run, on top of the city
  consents-mid-run  the city with its consent changes in event-time order (not first), fault-free
                    then with kill-9's faults; compared with each other (two rows)

Usage (not run in CI; results in bench/RESULTS.md):
    .venv/bin/python bench/scenarios.py all            # or: crosspaths scenario run all
    .venv/bin/python bench/scenarios.py kill-9 --users 300 --pace 90
The table goes to stdout; progress and details per output topic to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams import clients  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.tools import broker  # noqa: E402

OUTPUTS = ("crossings", "partner-statistics", "connection-statistics", "erasure-receipts")
INPUTS = ("consents", "geo-pings", "connection-logs")
# Fields that say when something happened on the wall clock, not what: left out of every comparison.
WALL_CLOCK_FIELDS = ("emitted_at", "completed_at", "all_copies_gone_by", "copies_gone_by")
MAIN = ("fault-free", "kill-9", "broker-restart", "rebalance", "combined", "oversized", "hostile", "crowd")
FAULTS = ("kill-9", "broker-restart", "rebalance", "combined", "oversized", "hostile")
CROWD_SPOT = (48.8606, 2.3376)  # the Louvre's courtyard
CROWD_MINUTES = 5

Message = tuple[str, bytes, bytes | None]  # (logical topic, key, value)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Workload:
    """The messages of one run: consents sent first (or not), the rest produced at a pace."""

    consents: list[Message]
    paced: list[Message]

    def counts(self) -> Counter:
        return Counter(topic for topic, _, _ in (*self.consents, *self.paced))


def city(params, consents_first: bool = True) -> Workload:
    """The simulated city; with consents_first, every consent record before any other message."""
    from streams.tools.simulator import simulate_city

    messages = list(simulate_city(params))
    if not consents_first:
        return Workload([], messages)
    return Workload([m for m in messages if m[0] == "consents"], [m for m in messages if m[0] != "consents"])


def event_time(value: bytes | None, previous: float) -> float:
    """A message's event time (ts or updated_at), or `previous` if it has none that parses (malformed)."""
    from schemas.timefmt import parse_ts

    try:
        doc = json.loads(value)
        return parse_ts(doc.get("ts", doc.get("updated_at")))
    except Exception:
        return previous


def merged(paced: list[Message], extra: list[tuple[float, Message]]) -> list[Message]:
    """`paced` (in event-time order, kept) with `extra` (event time, message) merged in by event time."""
    pending = sorted(extra, key=lambda e: e[0])
    out, t, i = [], float("-inf"), 0
    for m in paced:
        t = max(t, event_time(m[2], t))
        while i < len(pending) and pending[i][0] < t:
            out.append(pending[i][1])
            i += 1
        out.append(m)
    out.extend(m for _, m in pending[i:])
    return out


def inserted(paced: list[Message], at: float, extra: list[Message]) -> list[Message]:
    """`paced` with `extra` inserted once `at` (a fraction) of it is sent."""
    i = int(len(paced) * at)
    return [*paced[:i], *extra, *paced[i:]]


def crowd(params, users: int, minutes: int = CROWD_MINUTES) -> tuple[list[Message], list[tuple[float, Message]]]:
    """`users` people standing within ~30 m of one spot for `minutes`, a ping every 30 s, halfway through
    the city's time; all of them consenting to everything. Returns (consents, timed pings)."""
    import numpy as np

    from schemas.timefmt import format_ts

    rng = np.random.default_rng(params.seed + 1)
    t0 = params.start + params.hours * 3600 / 2
    consents, pings = [], []
    for i in range(users):
        user = f"crowd-{i:04d}"
        consents.append(("consents", user.encode(), json.dumps({
            "user_id": user, "updated_at": format_ts(params.start - 86400), "geolocation": True, "crossings": True,
            "partner_sharing": True, "deleted": False}).encode()))
        t = t0 + float(rng.uniform(0, 30))
        while t < t0 + minutes * 60:
            lat = CROWD_SPOT[0] + float(rng.normal(0, 15)) / 111_320
            lon = CROWD_SPOT[1] + float(rng.normal(0, 15)) / 73_300
            doc = {"user_id": user, "ts": int(t * 1000), "lat": round(lat, 6), "lon": round(lon, 6), "accuracy_m": 10}
            pings.append((t, ("geo-pings", user.encode(), json.dumps(doc).encode())))
            t += 30
    return consents, pings


def oversized_messages(settings: Settings) -> list[Message]:
    """One message per input topic of (almost) the largest size the broker accepts on it: a user_id of ~1 MB."""
    from kafka.admin import ConfigResource, ConfigResourceType

    out = []
    admin = clients.admin_client(settings, client_id="scenario-limits")
    try:
        for name in INPUTS:
            topic = settings.topic(name)
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
            limit = int(configs["topic"][topic]["max.message.bytes"]["value"])
            size = limit - 100  # the record batch adds ~70 bytes of headers and lengths, and the key
            head, tail = b'{"user_id": "', b'", "ts": 1}'
            out.append((name, b"big", head + b"a" * (size - len(head) - len(tail)) + tail))
    finally:
        admin.close()
    return out


def hostile_messages() -> list[Message]:
    """The hostile corpus (tests/hostile.py) as input messages keyed by its good user."""
    from tests.hostile import hostile_corpus

    topic_of = {"ping": "geo-pings", "connection-log": "connection-logs", "consent": "consents"}
    return [(topic_of[kind], b"u-1", raw) for kind, _, raw, _ in hostile_corpus()]


# --------------------------------------------------------------------------- workers and faults
class Fleet:
    """The worker processes of one run: started, scaled, killed; restarted when one dies on its own."""

    def __init__(self, settings: Settings, logs: Path):
        self.settings, self.logs = settings, logs
        self.procs: list = []
        self.started = 0
        self.restarts = 0
        self.exits: list[int] = []  # return codes of workers that exited on their own

    def start(self) -> None:
        from streams.tools.demo import start_worker
        from tests.e2e.helpers import free_port

        log = self.logs / f"{self.settings.app_id}-{self.started}.log"
        self.started += 1
        self.procs.append(start_worker(self.settings, free_port(), log))

    def scale(self, n: int) -> None:
        from streams.tools.demo import stop_worker
        from tests.e2e.helpers import wait_group_stable

        while len(self.procs) < n:
            self.start()
        while len(self.procs) > n:
            stop_worker(self.procs.pop())
        wait_group_stable(self.settings, members=n, timeout_s=180)

    def kill(self, rng: random.Random) -> None:
        """kill -9 of one worker (picked by rng), and a new one started in its place."""
        proc = self.procs.pop(rng.randrange(len(self.procs)))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.restarts += 1
        self.start()

    def check(self) -> None:
        """Replace every worker that exited on its own (counted as a restart)."""
        for proc in [p for p in self.procs if p.poll() is not None]:
            self.procs.remove(proc)
            self.exits.append(proc.returncode)
            say(f"  a worker exited on its own ({proc.returncode}); starting another")
            self.restarts += 1
            self.start()

    def stop(self) -> None:
        from streams.tools.demo import stop_worker

        for proc in self.procs:
            stop_worker(proc)
        self.procs = []


class LagSampler:
    """The largest consumer lag of the workers' group seen, summed over inputs and internal topics."""

    def __init__(self, settings: Settings):
        from streams.tools.demo import PIPELINE_TOPICS

        self.settings = settings
        self.topics = [settings.topic(name) for name in PIPELINE_TOPICS]
        self.max = 0
        self.paused = False  # while the broker is down: no admin call (it would block for seconds)
        self._last = 0.0

    def sample(self, every_s: float = 2.0) -> int | None:
        """The lag now (None: not asked, or no answer); at most one query per every_s."""
        from kafka.errors import KafkaError

        if self.paused or time.monotonic() - self._last < every_s:
            return None
        self._last = time.monotonic()
        try:
            from streams.tools.kafkaio import group_lag

            lag = sum(group_lag(self.settings, self.settings.app_id, self.topics).values())
        except (KafkaError, OSError, KeyError):
            return None
        self.max = max(self.max, lag)
        return lag


@dataclass
class Action:
    at: float  # fraction of the paced production
    label: str
    do: Callable[["Run"], None]


def restart_broker(run: "Run", down_s: float = 5.0) -> None:
    """Stop the broker (SIGTERM, a clean shutdown), wait down_s, start it again with its data."""
    run.lag.paused = True
    say(f"  {broker.stop(run.base)}")
    time.sleep(down_s)
    say(f"  {broker.start(run.base, timeout_s=180, quiet=True)}")
    run.lag.paused = False


# --------------------------------------------------------------------------- one run
class Sender(threading.Thread):
    """Produces messages at a steady pace over pace_s seconds; counts what the broker acknowledged."""

    def __init__(self, producer, settings: Settings, messages: list[Message], pace_s: float):
        super().__init__(daemon=True)
        self.producer, self.settings, self.messages, self.pace_s = producer, settings, messages, pace_s
        self.acked: Counter = Counter()
        self.failed: Counter = Counter()
        self._lock = threading.Lock()

    def _done(self, topic: str, ok: bool) -> None:
        with self._lock:
            (self.acked if ok else self.failed)[topic] += 1

    def run(self) -> None:
        t0, n = time.monotonic(), max(1, len(self.messages))
        for i, (topic, key, value) in enumerate(self.messages):
            delay = t0 + self.pace_s * i / n - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                future = self.producer.send(self.settings.topic(topic), key=key, value=value)
            except Exception as exc:  # e.g. no metadata within max_block_ms
                say(f"  send failed: {exc!r}")
                self._done(topic, False)
                continue
            future.add_callback(lambda _, t=topic: self._done(t, True))
            future.add_errback(lambda exc, t=topic: self._done(t, False))


@dataclass
class Plan:
    """What a scenario changes in the workload and does during the run."""

    workers: int = 1
    extra_consents: list[Message] = field(default_factory=list)
    paced: Callable[[list[Message]], list[Message]] = lambda paced: paced
    actions: list[Action] = field(default_factory=list)


@dataclass
class TopicView:
    """An output topic as a consumer reading it from the beginning sees it."""

    final: dict[bytes, str]  # key -> normalized latest content (tombstoned keys left out)
    records: int
    duplicates: int  # same key and normalized content as an earlier record
    exact: int  # of those, byte for byte
    corrections: int  # a different content than the key's previous record


def normalized(value: bytes | None, settings: Settings) -> str:
    """A record's content as compared between runs: run names out, wall-clock fields out, keys sorted."""
    if value is None:
        return "null"
    text = value.decode(errors="replace").replace(settings.app_id, "<app>").replace(settings.topic_prefix, "<prefix>")
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict):
        for name in WALL_CLOCK_FIELDS:
            doc.pop(name, None)
    return json.dumps(doc, sort_keys=True)


def read_output(settings: Settings, name: str) -> TopicView:
    from streams.tools.kafkaio import read_topic

    latest: dict[bytes, str] = {}
    seen: dict[bytes, set] = {}
    seen_raw: dict[bytes, set] = {}
    records = dup = exact = corr = 0
    for rec in read_topic(settings, settings.topic(name)):
        records += 1
        norm = normalized(rec.value, settings)
        if norm in seen.setdefault(rec.key, set()):
            dup += 1
            exact += rec.value in seen_raw[rec.key]
        if rec.key in latest and latest[rec.key] != norm:
            corr += 1
        seen[rec.key].add(norm)
        seen_raw.setdefault(rec.key, set()).add(rec.value)
        latest[rec.key] = norm
    return TopicView({k: v for k, v in latest.items() if v != "null"}, records, dup, exact, corr)


@dataclass
class Row:
    name: str
    messages_in: int
    views: dict[str, TopicView]
    max_lag: int
    restarts: int
    seconds: float
    notes: list[str]
    uncounted: int = 0  # pings and logs produced but not in the ingest counters (negative: counted twice)
    lost: int = 0
    extra: int = 0
    differ: int = 0

    def compare(self, reference: "Row") -> list[str]:
        """Fill lost / extra / differ against `reference`; one detail line per output topic that differs."""
        lines = []
        self.lost = self.extra = self.differ = 0
        for name in OUTPUTS:
            a, b = reference.views[name].final, self.views[name].final
            lost, extra = a.keys() - b.keys(), b.keys() - a.keys()
            differ = [k for k in a.keys() & b.keys() if a[k] != b[k]]
            self.lost += len(lost)
            self.extra += len(extra)
            self.differ += len(differ)
            if lost or extra or differ:
                lines.append(f"  {name}: {len(lost)} lost, {len(extra)} extra, {len(differ)} differ "
                             f"vs {reference.name}")
                for label, keys in (("lost", lost), ("extra", extra)):
                    if keys:
                        k = min(keys)
                        lines.append(f"    e.g. {label} {k!r}: {(a if label == 'lost' else b)[k][:160]}")
                if differ:
                    k = min(differ)
                    lines.append(f"    e.g. {k!r}\n      {reference.name}: {a[k][:200]}\n"
                                 f"      {self.name}: {b[k][:200]}")
        return lines

    def cells(self) -> list[str]:
        out = "/".join(str(len(self.views[n].final)) for n in OUTPUTS)
        dup = sum(v.duplicates for v in self.views.values())
        exact = sum(v.exact for v in self.views.values())
        corr = sum(v.corrections for v in self.views.values())
        return [self.name, str(self.messages_in), out, str(self.lost), str(self.extra), str(self.differ),
                f"{dup} ({exact} exact)", str(corr), str(self.max_lag), str(self.restarts), str(self.uncounted),
                f"{self.seconds:.0f}"]


HEADER = ["scenario", "in", "out (crossings/partner/connection/receipts)", "lost", "extra", "differ",
          "dup (exact)", "corr", "max lag", "restarts", "uncounted", "s"]


def table_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


class Run:
    """One pipeline run on its own topics and app id."""

    def __init__(self, base: Settings, name: str, timeout_s: float):
        tag = uuid.uuid4().hex[:6]
        self.base, self.name, self.timeout_s = base, name, timeout_s
        self.settings = base.model_copy(update={"topic_prefix": f"sc{tag}.", "app_id": f"crosspaths-sc{tag}"})
        self.logs = Path(base.home) / "logs"
        self.fleet = Fleet(self.settings, self.logs)
        self.lag = LagSampler(self.settings)

    def execute(self, workload: Workload, plan: Plan, pace_s: float) -> Row:
        from streams.topics import create_topics

        s = self.settings
        create_topics(s)
        producer = clients.producer(s, client_id="scenario", linger_ms=20, batch_size=256 * 1024,
                                    max_request_size=4 * 1024 * 1024, delivery_timeout_ms=300_000)
        t_start = time.monotonic()
        notes: list[str] = []
        try:
            self.fleet.scale(plan.workers)
            consents = [*workload.consents, *plan.extra_consents]
            for topic, key, value in consents:
                producer.send(s.topic(topic), key=key, value=value)
            producer.flush()
            if consents:
                self._wait_counted({"consents": len(consents)}, 120)
            paced = plan.paced(workload.paced)
            sender = Sender(producer, s, paced, pace_s)
            actions = sorted(plan.actions, key=lambda a: a.at)
            t0 = time.monotonic()
            sender.start()
            while sender.is_alive() or actions:
                while actions and time.monotonic() - t0 >= actions[0].at * pace_s:
                    action = actions.pop(0)
                    say(f"  {time.monotonic() - t0:5.1f} s: {action.label}")
                    action.do(self)
                self.fleet.check()
                self.lag.sample()
                time.sleep(0.5)
            producer.flush(timeout=300)
            sent = Counter({"consents": len(consents)}) + sender.acked
            if sender.failed:
                notes.append(f"sends failed: {dict(sender.failed)}")
            notes.extend(self._drain())
            notes.extend(self._windows())
            views = {name: read_output(s, name) for name in OUTPUTS}
            lines, uncounted = self._accounting(sent)
            notes.extend(lines)
        except BaseException:
            for log in sorted(self.logs.glob(f"{s.app_id}-*.log")):
                say(f"---- {log} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
            raise
        finally:
            self.fleet.stop()
            producer.close()
        return Row(self.name, sum(sent.values()), views, self.lag.max, self.fleet.restarts,
                   time.monotonic() - t_start, notes, uncounted)

    def _wait_counted(self, expected: dict[str, int], timeout_s: float) -> bool:
        """Until the workers counted at least `expected` per input topic (consents also count the pipeline's
        own erasure tombstones); keeps replacing workers that die and sampling the lag."""
        from streams.tools.report import read_counters

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.fleet.check()
            self.lag.sample()
            try:
                counters = read_counters(self.settings)
            except Exception:  # the broker coming back
                counters = None
            if counters and all(counters.topics[t].received >= n for t, n in expected.items()):
                return True
            time.sleep(1)
        return False

    def _drain(self, quiet_s: float = 5.0) -> list[str]:
        """Wait until the group has no lag on any input or internal topic for quiet_s (every record handled and
        committed; stages send progress markers once a second, hence the quiet time)."""
        deadline = time.monotonic() + self.timeout_s
        quiet_since = None
        while time.monotonic() < deadline:
            self.fleet.check()
            lag = self.lag.sample(every_s=0)
            if lag == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_s:
                    return []
            else:
                quiet_since = None
            time.sleep(1)
        return [f"NOT DRAINED: still lagging after {self.timeout_s:.0f} s"]

    def _windows(self) -> list[str]:
        """The statistics stages' watermarks and open windows, from each worker's /state/ page (a window
        not published yet is open, or its watermark held back by an input partition: `slowest_input`)."""
        import urllib.request

        lines = []
        for proc in self.fleet.procs:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{proc.args[-1]}/state/", timeout=10) as r:
                    state = json.loads(r.read())
            except OSError as exc:
                lines.append(f"/state/ of worker pid {proc.pid}: {exc}")
                continue
            for stage in ("stats-cells", "stats-connections"):
                for p, v in sorted(state.get(stage, {}).items()):
                    lines.append(f"{stage} {p}: watermark {v.get('watermark')}, open {v.get('open_windows')}, "
                                 f"slowest input {v.get('slowest_input')}")
        return lines

    def _accounting(self, sent: Counter) -> tuple[list[str], int]:
        """Ingest counters against what was produced, and the dead letters by reason; and how many pings
        and logs the counters miss (negative: counted twice)."""
        from streams.tools.report import dead_letter_reasons, read_counters

        counters = read_counters(self.settings)
        lines, uncounted = [], 0
        for topic in INPUTS:
            c = counters.topics[topic]
            more = c.received - sent.get(topic, 0)
            uncounted -= more if topic != "consents" else 0
            why = "the pipeline's own erasure tombstones" if topic == "consents" else "counted twice"
            why = why if more > 0 else "NOT COUNTED"
            lines.append(f"{topic}: {sent.get(topic, 0)} sent, {c.received} counted"
                         + (f" ({more:+d}: {why})" if more else "") + ("" if c.reconciles else ", DOES NOT RECONCILE"))
        reasons = Counter()
        for (_, reason), n in dead_letter_reasons(self.settings).items():
            reasons[reason] += n
        lines.append(f"dead letters {sum(reasons.values())}: "
                     + ", ".join(f"{r} {n}" for r, n in reasons.most_common()))
        if counters.late:
            lines.append("late per stage: " + ", ".join(f"{stage} {n}" for stage, n in sorted(counters.late.items())))
        return lines, uncounted


# --------------------------------------------------------------------------- scenarios
def plan_for(name: str, base: Settings, params, args) -> Plan:
    rng = random.Random(args.seed)
    if name in ("fault-free", "consents-mid-run/fault-free"):
        return Plan()
    if name in ("kill-9", "consents-mid-run/kill-9"):
        moments = [rng.uniform(0.15, 0.45), rng.uniform(0.55, 0.85)]
        return Plan(actions=[Action(at, "kill -9 of a worker, and a new one started", lambda run: run.fleet.kill(rng))
                             for at in moments])
    if name == "broker-restart":
        return Plan(actions=[Action(0.4, "broker stopped, started again 5 s later", restart_broker)])
    if name == "rebalance":
        return Plan(actions=[Action(0.3, "two workers join (1 -> 3)", lambda run: run.fleet.scale(3)),
                             Action(0.65, "two workers leave (3 -> 1)", lambda run: run.fleet.scale(1))])
    if name == "combined":
        kill = lambda run: run.fleet.kill(rng)  # noqa: E731
        return Plan(actions=[
            Action(rng.uniform(0.10, 0.22), "kill -9 of the worker, and a new one started", kill),
            Action(0.30, "two workers join (1 -> 3)", lambda run: run.fleet.scale(3)),
            Action(rng.uniform(0.38, 0.48), "kill -9 of one of three workers, and a new one started", kill),
            Action(0.55, "broker stopped, started again 5 s later", restart_broker),
            Action(0.72, "two workers leave (3 -> 1)", lambda run: run.fleet.scale(1))])
    if name == "oversized":
        big = oversized_messages(base.model_copy(update={"topic_prefix": args.limits_prefix}))
        return Plan(paced=lambda paced: inserted(inserted(paced, 0.6, big), 0.3, big))
    if name == "hostile":
        corpus = hostile_messages()
        return Plan(paced=lambda paced: inserted(paced, 0.5, corpus))
    if name == "crowd":
        consents, pings = crowd(params, args.crowd)
        return Plan(extra_consents=consents, paced=lambda paced: merged(paced, pings))
    raise ValueError(f"unknown scenario {name!r}")


def run_one(base: Settings, name: str, workload: Workload, params, args) -> Row:
    say(f"== {name}")
    plan = plan_for(name, base, params, args)
    row = Run(base, name, args.timeout).execute(workload, plan, args.pace)
    for note in row.notes:
        say(f"  {note}")
    for n in OUTPUTS:
        v = row.views[n]
        say(f"  {n}: {v.records} records read, {len(v.final)} keys with a record, {v.duplicates} again "
            f"({v.exact} byte for byte), {v.corrections} changing a key's value")
    return row


def ensure_home(base: Settings) -> None:
    """The scenario broker's home, with the Kafka jars linked from the default cache if it has them."""
    home = Path(base.home)
    home.mkdir(parents=True, exist_ok=True)
    jars = home / f"kafka-{base.kafka_version}"
    cached = Settings().home.expanduser() / f"kafka-{base.kafka_version}"
    if not jars.exists() and (cached / "libs" / ".complete").exists():
        jars.symlink_to(cached)
    from streams.settings import pseudonym_secret

    pseudonym_secret(base)  # made once here, not raced by workers starting together


def main() -> None:
    from streams.tools.simulator import SimulationParams

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", help=f"one of {', '.join(MAIN)}, consents-mid-run, all, or several comma-separated")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--hours", type=float, default=1.2, help="simulated time, from two hours ago on the hour")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pace", type=float, default=60.0, help="seconds over which pings and logs are produced")
    ap.add_argument("--crowd", type=int, default=300, help="users in the crowd scenario's crowd")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the pipeline to drain")
    ap.add_argument("--port", type=int, default=49192, help="the scenario broker's port (controller: port + 1)")
    ap.add_argument("--home", type=Path, default=Path("/tmp/scen-home"))
    ap.add_argument("--keep-broker", action="store_true", help="leave the broker running with its data")
    args = ap.parse_args()
    base = Settings(broker_port=args.port, controller_port=args.port + 1, bootstrap_servers=f"127.0.0.1:{args.port}",
                    home=args.home, topic_prefix="", app_id="crosspaths")
    names = list(MAIN) if args.scenario == "all" else args.scenario.split(",")
    if not set(names) <= {*MAIN, "consents-mid-run"} or ("consents-mid-run" in names and len(names) > 1):
        raise SystemExit(f"unknown scenario {args.scenario!r}; one of {', '.join(MAIN)}, consents-mid-run, all")
    # Two hours back on the hour: the first statistics window is whole, and closes (events run past its end).
    start = (int(time.time()) // 3600 - 2) * 3600
    params = SimulationParams(users=args.users, hours=args.hours, seed=args.seed, start=start)
    ensure_home(base)
    say(broker.reset(base))
    say(broker.start(base, timeout_s=180, quiet=True))
    rows: list[Row] = []
    try:
        from streams.topics import create_topics

        args.limits_prefix = "limits."
        create_topics(base.model_copy(update={"topic_prefix": args.limits_prefix}))  # to read the topics' limits
        if names == ["consents-mid-run"]:
            workload = city(params, consents_first=False)
            names = ["consents-mid-run/fault-free", "consents-mid-run/kill-9"]
        else:
            workload = city(params)
            if names[0] != "fault-free":
                names.insert(0, "fault-free")
        say(f"city: {args.users} users, {args.hours} h, seed {args.seed}; {sum(workload.counts().values())} messages "
            f"({dict(workload.counts())}), paced over {args.pace:.0f} s; broker {base.bootstrap_servers}")
        print(table_line(HEADER))
        print(table_line(["---"] * len(HEADER)), flush=True)
        for name in names:
            try:
                row = run_one(base, name, workload, params, args)
            except Exception as exc:  # one scenario failing says so in its row; the others still run
                say(f"  {name} FAILED: {exc!r}")
                print(table_line([name, f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"]), flush=True)
                if not rows:
                    raise
                continue
            if rows:
                for line in row.compare(rows[0]):
                    say(line)
            rows.append(row)
            print(table_line(row.cells()), flush=True)
    finally:
        say(broker.stop(base) if args.keep_broker else broker.reset(base))
    faults = [r for r in rows if r.name in FAULTS]
    same = all(not (r.lost or r.extra or r.differ or r.uncounted) and not any("NOT DRAINED" in n for n in r.notes)
               for r in faults)
    sys.exit(0 if same and len(rows) == len(names) else 1)


if __name__ == "__main__":
    main()
