"""End to end on a real local three-broker KRaft cluster: one broker killed (kill -9) mid-run, then restarted.

The short version of bench/bench_failover.py, for CI. The test starts its own cluster (`broker
start --nodes 3`: each node broker and controller, so a lost node leaves a quorum of two) on its
own ports and in its own folder; topics with replication 3 and min.insync.replicas 2; one worker.
The broker killed is the coordinator of the worker's consumer group, the hardest one to lose: the
group, its committed offsets and the leadership of about a third of the partitions move at once.

A city's pings go in: a third, then the kill (while the worker handles them), a third while the
broker is down (fenced, out of every ISR), the rest once it is back. Then: every ping counted once,
the final crossing record under each key is the batch detector's, nothing was quarantined, the
worker is the process that started, and the killed broker is back in the ISR of every partition.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass

import pytest

from geo.crossings import CrossingParams
from geo.oracle import brute_force_pairs
from streams import clients
from streams.settings import Settings
from streams.tools import broker
from streams.tools.demo import wait_for_drain
from streams.tools.kafkaio import is_retriable
from streams.tools.report import read_counters
from tests.e2e.helpers import consume_all, producer, running_workers, wait_received
from tests.e2e.test_crossings import assert_final_records_are_the_batchs, city_pings, produce_pings, reported_pairs

pytestmark = pytest.mark.e2e

# Node 1 on these ports, nodes 2 and 3 two and four above (59092/59093, 59094/59095, 59096/59097).
CLUSTER_PORT = int(os.environ.get("CROSSPATHS_TEST_CLUSTER_PORT", "59092"))
NODES = 3
BUDGET_S = 165  # the cluster's start and the whole scenario; every wait takes what is left of it


@dataclass(frozen=True)
class Cluster:
    """The test cluster's settings, and when the test must be over."""

    settings: Settings
    deadline: float

    def left(self) -> float:
        """Seconds left of the budget (at least 1: one last look before an assertion fails)."""
        return max(1.0, self.deadline - time.monotonic())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A fresh three-node cluster in its own folder (the Kafka jars linked from the shared cache)."""
    deadline = time.monotonic() + BUDGET_S
    home = tmp_path_factory.mktemp("cluster")
    bootstrap = ",".join(f"127.0.0.1:{CLUSTER_PORT + 2 * i}" for i in range(NODES))
    local = Settings(home=home, broker_port=CLUSTER_PORT, controller_port=CLUSTER_PORT + 1,
                     bootstrap_servers=bootstrap, replication_factor=3, min_insync_replicas=2)
    libs = broker.ensure_jars(Settings(broker_port=CLUSTER_PORT))
    broker.paths_for(local).libs.parent.mkdir(parents=True)
    broker.paths_for(local).libs.symlink_to(libs, target_is_directory=True)
    try:
        try:
            print(broker.start(local, timeout_s=90, nodes=NODES))
        except broker.BrokerError as exc:
            pytest.fail(f"could not start the test cluster: {exc}")
        # broker.start returns once every node is registered and unfenced (can hold replicas).
        yield Cluster(local, deadline)
    finally:
        print(broker.stop(local, timeout_s=5))  # a throwaway cluster: KILL soon after TERM


def test_a_broker_killed_mid_run_loses_nothing(cluster, tmp_path):
    left = cluster.left
    secret = tmp_path / "pseudonym.key"
    secret.write_bytes(os.urandom(32))
    tag = uuid.uuid4().hex[:8]
    s = cluster.settings.model_copy(update={"topic_prefix": f"c{tag}.", "app_id": f"crosspaths-c{tag}",
                                            "partitions": 4, "home": tmp_path, "pseudonym_secret_file": secret})
    df = city_pings(seed=17)
    df["ts"] = (df["ts"] * 1000).round() / 1000  # what goes over the wire: epoch milliseconds
    oracle = brute_force_pairs(df, CrossingParams())
    assert len(oracle) > 30, "the workload must produce crossings"
    thirds = [df.iloc[i * len(df) // 3:(i + 1) * len(df) // 3] for i in range(3)]

    with running_workers(s, count=1) as (worker,):
        victim = _coordinator(s)
        assert len(_voters(s)) == NODES, "every node a controller: one lost leaves a quorum"
        partitions = _partitions(s)
        assert partitions and all(len(p["replica_nodes"]) == NODES for p in partitions.values()), \
            "replication 3 everywhere"
        prod = producer(s)
        produce_pings(s, prod, thirds[0])
        node = broker.cluster_nodes(cluster.settings, NODES)[victim - 1]
        os.kill(broker.running_pid(node.settings), signal.SIGKILL)
        killed_at = time.monotonic()
        produce_pings(s, prod, thirds[1])  # acks=all: acknowledged by the two brokers left
        fenced = _wait_isr(s, lambda isr: all(victim not in r for r in isr.values()), min(60.0, left()))
        assert all(victim not in r for r in fenced.values()), f"node {victim} still in an ISR after kill -9"

        down_s = time.monotonic() - killed_at
        print(broker.start(cluster.settings, timeout_s=min(90.0, left())))  # relaunches the missing node
        restarted_at = time.monotonic()
        produce_pings(s, prod, thirds[2])
        prod.close()
        wait_received(s, {"geo-pings": len(df)}, timeout_s=left())  # exactly: nothing lost, nothing twice
        assert wait_for_drain(s, timeout_s=left(), quiet_s=2)
        records = consume_all(s, "crossings")
        letters = consume_all(s, "dead-letters")
        counters = read_counters(s).topics["geo-pings"]
        rejoined = _wait_isr(s, lambda isr: isr.keys() >= partitions.keys() and all(victim in r for r in isr.values()),
                             left())
        print(f"node {victim} (the group's coordinator) killed, out of every ISR after {down_s:.1f} s, "
              f"restarted; back in every ISR {time.monotonic() - restarted_at:.1f} s after its restart at the latest")
        assert worker.poll() is None, "the worker died"

    crashes = [line for line in (tmp_path / "worker-0.log").read_text(errors="replace").splitlines()
               if "crashed" in line.lower()]
    assert crashes == [], "a service or agent of the worker crashed"
    assert set(reported_pairs(records)) == oracle
    assert_final_records_are_the_batchs(records, df)
    assert letters == [], "nothing quarantined (a send that kept failing would be)"
    assert counters.received == len(df) and counters.reconciles
    assert rejoined.keys() >= partitions.keys()
    assert all(victim in r for r in rejoined.values()), f"node {victim} did not rejoin every ISR: {rejoined}"


def _admin_call(settings: Settings, call):
    """call(admin) with a fresh admin client, asked again while the cluster answers with a retriable error."""
    deadline = time.monotonic() + 30
    while True:
        admin = None
        try:
            admin = clients.admin_client(settings, client_id="crosspaths-test-cluster")
            return call(admin)
        except Exception as exc:
            if not is_retriable(exc) or time.monotonic() > deadline:
                raise
        finally:
            if admin is not None:
                admin.close()
        time.sleep(0.5)


def _coordinator(settings: Settings) -> int:
    """The node id of the coordinator of the workers' consumer group."""
    # kafka-python has no public call for it, and describe_groups does not name it.
    return _admin_call(settings, lambda admin: admin._manager.run(admin._find_coordinator_id, settings.app_id))


def _voters(settings: Settings) -> list[int]:
    """The node ids of the KRaft controller quorum's voters."""
    quorum = _admin_call(settings, lambda admin: admin.describe_metadata_quorum())
    return [v["replica_id"] for topic in quorum["topics"] for p in topic["partitions"] for v in p["current_voters"]]


def _partitions(settings: Settings) -> dict[tuple[str, int], dict]:
    """The metadata of every partition of this run's topics: the pipeline's, and the worker's own
    (changelogs and Faust's topics, named after the app id)."""
    def describe(admin) -> list[dict]:
        names = [t for t in admin.list_topics() if t.startswith((settings.topic_prefix, settings.app_id))]
        return admin.describe_topics(names)

    return {(t["name"], p["partition_index"]): p for t in _admin_call(settings, describe) for p in t["partitions"]}


def _isr(settings: Settings) -> dict[tuple[str, int], set[int]]:
    """The in-sync replicas of every partition of this run's topics."""
    return {key: set(p["isr_nodes"]) for key, p in _partitions(settings).items()}


def _wait_isr(settings: Settings, done, timeout_s: float) -> dict[tuple[str, int], set[int]]:
    """The ISRs once done(isr) holds, or the last ones seen after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        isr = _isr(settings)
        if (isr and done(isr)) or time.monotonic() > deadline:
            return isr
        time.sleep(1)
