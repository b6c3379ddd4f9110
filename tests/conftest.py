"""Shared fixtures: a real Kafka broker for the end-to-end tests, started once per session."""
from __future__ import annotations

import os
import uuid

import pytest

from streams.tools import broker
from streams.settings import Settings

TEST_BROKER_PORT = int(os.environ.get("CROSSPATHS_TEST_BROKER_PORT", "19092"))
# The test broker checks retention every 5 s, so that tests with short lifetimes see records go.
TEST_RETENTION_CHECK_MS = 5000


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """Bootstrap servers of a real broker: CROSSPATHS_TEST_BOOTSTRAP_SERVERS, or a local one started here."""
    external = os.environ.get("CROSSPATHS_TEST_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    local = Settings(broker_port=TEST_BROKER_PORT, controller_port=TEST_BROKER_PORT + 1,
                     bootstrap_servers=f"127.0.0.1:{TEST_BROKER_PORT}",
                     broker_retention_check_ms=TEST_RETENTION_CHECK_MS)
    started = broker.running_pid(local) is None
    if started:
        # A fresh broker per session: topics of earlier sessions (every test makes its own) would
        # pile up in the broker's data until it runs out of file descriptors.
        broker.reset(local)
    try:
        print(broker.start(local, timeout_s=180))
    except broker.BrokerError as exc:
        pytest.fail(f"could not start the test Kafka broker: {exc}")
    yield local.bootstrap_servers
    if started and not os.environ.get("CROSSPATHS_TEST_KEEP_BROKER"):
        broker.stop(local)


@pytest.fixture
def pipeline_settings(kafka_bootstrap, tmp_path):
    """Settings for one isolated pipeline run: its own topic prefix and app id on the real broker.

    Partner statistics are k-anonymous regions with exact counts here (dp_epsilon=0), which the tests
    recount; the DP tests (tests/e2e/test_statistics.py) set the default differential privacy back on.
    """
    run = uuid.uuid4().hex[:8]
    secret = tmp_path / "pseudonym.key"
    secret.write_bytes(os.urandom(32))
    return Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{run}.", app_id=f"crosspaths-t{run}",
                    partitions=4, home=tmp_path, pseudonym_secret_file=secret, dp_epsilon=0)
