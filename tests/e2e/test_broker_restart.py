"""End to end on a broker of its own: the broker stopped and started again mid-run loses no input,
the final crossing records are the batch detector's, and the worker rides through it."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from streams.settings import Settings
from streams.tools import broker
from streams.tools.demo import start_worker, stop_worker, wait_for_drain
from streams.topics import create_topics
from tests.e2e.helpers import consume_all, free_port, producer, wait_group_stable, wait_received
from tests.e2e.test_crossings import assert_final_records_are_the_batchs, city_pings, produce_pings

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_broker():
    """A single local broker for this test alone (the session's is shared by every test): its own
    ports and folder, deleted afterwards."""
    port = free_port()
    local = Settings(broker_port=port, controller_port=free_port(), bootstrap_servers=f"127.0.0.1:{port}")
    broker.reset(local)
    try:
        broker.start(local, timeout_s=120, quiet=True)
    except broker.BrokerError as exc:
        pytest.fail(f"could not start this test's broker: {exc}")
    yield local
    broker.reset(local)


def test_a_broker_restart_mid_run_loses_nothing(own_broker, tmp_path):
    """A third of the pings handled, a third produced and the broker stopped (SIGTERM) while the
    worker is at them, started again 5 s later with its data, then the last third: every ping is
    counted exactly once, the worker never exits, and under every key of `crossings` the final
    record is the batch detector's."""
    run = uuid.uuid4().hex[:8]
    secret = tmp_path / "pseudonym.key"
    secret.write_bytes(os.urandom(32))
    s = Settings(bootstrap_servers=own_broker.bootstrap_servers, topic_prefix=f"b{run}.", app_id=f"crosspaths-b{run}",
                 partitions=4, home=tmp_path, pseudonym_secret_file=secret)
    df = city_pings(seed=16)
    df["ts"] = (df["ts"] * 1000).round() / 1000  # what goes over the wire: epoch milliseconds
    n = len(df) // 3
    first, second, third = df.iloc[:n], df.iloc[n:2 * n], df.iloc[2 * n:]
    create_topics(s)
    log = tmp_path / "worker.log"
    worker = start_worker(s, free_port(), log)
    try:
        wait_group_stable(s, members=1)
        prod = producer(s)
        produce_pings(s, prod, first)
        wait_received(s, {"geo-pings": len(first)})
        produce_pings(s, prod, second)
        broker.stop(own_broker)
        time.sleep(5)
        assert worker.poll() is None, "the worker exited while the broker was down"
        broker.start(own_broker, timeout_s=60, quiet=True)
        produce_pings(s, prod, third)
        wait_received(s, {"geo-pings": len(df)}, timeout_s=60)  # exact: nothing lost, nothing counted twice
        assert wait_for_drain(s, timeout_s=40, quiet_s=3)
        records = consume_all(s, "crossings")
        assert worker.poll() is None, "the worker exited"
    except BaseException:
        print(f"---- {log} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        raise
    finally:
        stop_worker(worker)
    assert_final_records_are_the_batchs(records, df)
