"""A broker of a three-node cluster killed (kill -9) mid-run and restarted: are the outputs those of a fault-free run?

Needs a local three-node cluster (`crosspaths broker start --nodes 3 [--secure]`) and the same
settings in the environment (CROSSPATHS_HOME, _BROKER_PORT, _CONTROLLER_PORT, _BOOTSTRAP_SERVERS with
every node, and with --secure CROSSPATHS_CLIENT_PROPERTIES of the admin, which may do what the
pipeline does). Two runs of the same simulated city, each with its own topics (replication 3,
min.insync.replicas 2) and one worker:
  1. fault-free;
  2. the same input, with node --kill-node killed (SIGKILL) once --kill-at of it is produced, and
     restarted --down seconds later (`broker start` relaunches the node that is missing).
Then compares, as sets, the crossing records (all fields but emitted_at), partner-statistics and
connection-statistics, and checks the ingest counters reconcile. Exit 1 if anything differs.

Usage (not run in CI; results in bench/RESULTS.md):
    CROSSPATHS_HOME=/tmp/cp CROSSPATHS_BROKER_PORT=39292 CROSSPATHS_CONTROLLER_PORT=39293 \\
    CROSSPATHS_BOOTSTRAP_SERVERS=127.0.0.1:39292,127.0.0.1:39294,127.0.0.1:39296 \\
    python bench/bench_failover.py --users 300 --hours 1
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams import clients  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.tools import broker  # noqa: E402


def produce(settings: Settings, params, on_fraction=None, at: float = 1.0,
            consents_first: bool = False) -> dict[str, int]:
    """Produce the simulated city; call on_fraction() once `at` of the messages are handed over.

    consents_first: every consent record first, and only once the worker has counted them the rest.
    """
    from streams.tools.simulator import simulate_city
    from tests.e2e.helpers import wait_received

    messages = list(simulate_city(params))
    producer = clients.producer(settings, client_id="bench-failover", linger_ms=20, batch_size=256 * 1024)
    counts: dict[str, int] = {}
    if consents_first:
        first = [m for m in messages if m[0] == "consents"]
        for topic, key, value in first:
            producer.send(settings.topic(topic), key=key, value=value)
        producer.flush()
        wait_received(settings, {"consents": len(first)})
        counts["consents"] = len(first)
        messages = [m for m in messages if m[0] != "consents"]
    trigger = int(len(messages) * at)
    for i, (topic, key, value) in enumerate(messages):
        if i == trigger and on_fraction is not None:
            producer.flush()
            on_fraction()
        producer.send(settings.topic(topic), key=key, value=value)
        counts[topic] = counts.get(topic, 0) + 1
    producer.flush()
    producer.close()
    return counts


def outputs(settings: Settings) -> dict[str, list]:
    """Each output topic as what a reader ends up with: the latest value per key (compaction's view;
    a later record under a key corrects it), emitted_at left out (the only field allowed to differ)."""
    from streams.tools.kafkaio import read_topic

    out = {}
    for name in ("crossings", "partner-statistics", "connection-statistics"):
        latest: dict = {}
        for rec in read_topic(settings, settings.topic(name)):
            doc = json.loads(rec.value) if rec.value is not None else None  # None: a tombstone
            if doc is not None:
                doc.pop("emitted_at", None)
            latest[rec.key] = json.dumps(doc, sort_keys=True)
        out[name] = [(k, v) for k, v in latest.items() if v != "null"]
    return out


def drain(settings: Settings, timeout_s: float) -> bool:
    """wait_for_drain, again after a retriable error (a group coordinator that moved with a broker)."""
    from kafka.errors import KafkaError

    from streams.tools.demo import wait_for_drain

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return wait_for_drain(settings, max(1.0, deadline - time.monotonic()))
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            time.sleep(1)


def run(base: Settings, params, args, fault: bool) -> tuple[dict[str, list], dict[str, int], float]:
    """One pipeline run on its own topics; returns (outputs, produced counts, seconds)."""
    from streams.tools.demo import start_worker, stop_worker
    from streams.tools.report import read_counters
    from streams.topics import create_topics
    from tests.e2e.helpers import free_port, wait_group_stable

    tag = uuid.uuid4().hex[:6]
    s = base.model_copy(update={"topic_prefix": f"fo{tag}.", "app_id": f"crosspaths-fo{tag}"})
    create_topics(s)
    log = Path(s.home).expanduser() / f"bench-failover-{tag}.log"
    t0 = time.perf_counter()
    worker = start_worker(s, free_port(), log)
    try:
        wait_group_stable(s, members=1)
        killed: list[float] = []

        def kill() -> None:
            node = broker.cluster_nodes(base, 3)[args.kill_node - 1]
            pid = broker.running_pid(node.settings)
            os.kill(pid, signal.SIGKILL)
            killed.append(time.monotonic())
            print(f"  kill -9 node {args.kill_node} (pid {pid}) at {time.perf_counter() - t0:.1f} s", flush=True)

        counts = produce(s, params, kill if fault else None, args.kill_at, consents_first=args.steady_consents)
        if fault:
            time.sleep(max(0.0, killed[0] + args.down - time.monotonic()))
            print(f"  restart: {broker.start(base, timeout_s=180)}", flush=True)
        if not drain(s, args.timeout):
            raise SystemExit(f"the worker did not drain within {args.timeout:.0f} s; see {log}")
        elapsed = time.perf_counter() - t0
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited ({worker.returncode}); see {log}")
        counters = read_counters(s)
        for topic, c in counters.topics.items():  # consents also get the pipeline's own erasure tombstones
            print(f"  {topic}: {counts.get(topic, 0)} produced, {vars(c)}, "
                  f"{'reconciles' if c.reconciles else 'DOES NOT RECONCILE'}", flush=True)
        return outputs(s), counts, elapsed
    finally:
        stop_worker(worker)


def main() -> None:
    from streams.tools.simulator import SimulationParams

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--kill-node", type=int, default=2, choices=(1, 2, 3))
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction of the input produced before the kill")
    ap.add_argument("--down", type=float, default=15.0, help="seconds the node stays down")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--control", action="store_true",
                    help="no kill in run 2 either: how much two fault-free runs of the same input differ")
    ap.add_argument("--steady-consents", action="store_true",
                    help="no consent change during the run, and every consent handled before any ping: the "
                         "consent gate applies the consent known when a ping arrives, so mid-run changes make "
                         "outputs depend on how the consents and pings topics interleave (see RESULTS.md)")
    args = ap.parse_args()
    base = Settings()
    base = base.model_copy(update={"replication_factor": 3, "min_insync_replicas": 2})
    up = broker.brokers_up(base.bootstrap_servers, auth=clients.client_auth(base))
    if up != 3:
        raise SystemExit(f"{base.bootstrap_servers} has {up} brokers up; start them: crosspaths broker start --nodes 3")
    start = (int(time.time()) // 60) * 60 - args.hours * 3600
    params = SimulationParams(users=args.users, hours=args.hours, seed=args.seed, start=start,
                              **({"opt_out_mid_run": 0, "opt_in_mid_run": 0, "deletions_mid_run": 0}
                                 if args.steady_consents else {}))
    print(f"city: {args.users} users, {args.hours} h, seed {args.seed}; cluster {base.bootstrap_servers}", flush=True)
    print("run 1: fault-free", flush=True)
    clean, counts, t_clean = run(base, params, args, fault=False)
    print(f"  {sum(counts.values())} messages, drained in {t_clean:.1f} s", flush=True)
    if args.control:
        print("run 2: fault-free again (--control)", flush=True)
    else:
        print(f"run 2: node {args.kill_node} killed at {args.kill_at:.0%} of the input, down {args.down:.0f} s",
              flush=True)
    faulty, _, t_fault = run(base, params, args, fault=not args.control)
    print(f"  drained in {t_fault:.1f} s", flush=True)
    same = True
    for name in clean:
        a, b = set(clean[name]), set(faulty[name])
        verdict = "identical" if a == b else f"DIFFERENT: {len(a - b)} only fault-free, {len(b - a)} only faulty"
        same &= a == b
        print(f"{name:<22} {len(a):>7} keys fault-free vs {len(b):>7} in run 2: {verdict}")
        if a != b:
            print(f"    e.g. only in run 1: {min(a - b, default=None)}\n         only in run 2: {min(b - a, default=None)}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
