"""End to end on a real secured broker (SASL/SCRAM-SHA-512, ACLs, deny when none matches).

One broker started with `--secure`, the ACLs of streams/principals.py applied by the admin, one
worker running as the `pipeline` principal, input produced as `producer`. Then: the crossings
reach `crossings-reader`, the statistics reach `partner`, and every principal is refused what the
table does not grant it. An ordinary Kafka client throughout; nothing is mocked.
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid

import pandas as pd
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from anonymizers.windows import window_start
from geo.crossings import CrossingParams
from geo.oracle import brute_force_pairs
from schemas.timefmt import format_ts
from streams import clients
from streams.settings import Settings
from streams.tools import broker
from streams.tools.acl import apply_acls
from streams.tools.report import read_counters
from streams.topics import create_topics, topic_specs
from tests.e2e.helpers import running_workers, send_json, wait_received

pytestmark = pytest.mark.e2e

SECURE_PORT = int(os.environ.get("CROSSPATHS_TEST_SECURE_BROKER_PORT", "19192"))
TOPIC_AUTHORIZATION_FAILED = 29
PERSONAL = ("geo-pings", "connection-logs", "consents", "crossings", "dead-letters")
SPOT = (48.8566, 2.3522)


@pytest.fixture(scope="module", params=["SASL_PLAINTEXT", "SASL_SSL"])
def secure_broker(request, tmp_path_factory):
    """A fresh secured broker in its own folder (the Kafka jars linked from the shared cache); SCRAM over
    plaintext TCP, then over TLS (a local CA): every test of this file runs on both."""
    home = tmp_path_factory.mktemp("secure-broker")
    local = Settings(home=home, broker_port=SECURE_PORT, controller_port=SECURE_PORT + 1,
                     bootstrap_servers=f"127.0.0.1:{SECURE_PORT}")
    libs = broker.ensure_jars(Settings(broker_port=SECURE_PORT))
    broker.paths_for(local).libs.parent.mkdir(parents=True)
    broker.paths_for(local).libs.symlink_to(libs, target_is_directory=True)
    try:
        print(broker.start(local, timeout_s=180, secure=True, tls=request.param == "SASL_SSL"))
    except broker.BrokerError as exc:
        pytest.fail(f"could not start the secured test broker: {exc}")
    yield local
    broker.stop(local)


@pytest.fixture(scope="module")
def run(secure_broker, tmp_path_factory):
    """One pipeline run on the secured broker; returns (settings of each principal, pings produced)."""
    home = tmp_path_factory.mktemp("secure-run")
    secret = home / "pseudonym.key"
    secret.write_bytes(os.urandom(32))
    tag = uuid.uuid4().hex[:8]
    base = Settings(bootstrap_servers=secure_broker.bootstrap_servers, topic_prefix=f"s{tag}.",
                    app_id=f"crosspaths-s{tag}", partitions=2, home=home, pseudonym_secret_file=secret,
                    dp_epsilon=0)  # k-anonymous regions: the partner reads exact counts of a small run
    folder = broker.paths_for(secure_broker).clients
    as_ = {name: base.model_copy(update={"client_properties": folder / f"{name}.properties"})
           for name in ("admin", "pipeline", "producer", "crossings-reader", "partner")}
    assert clients.client_auth(as_["pipeline"]).protocol == secure_broker_protocol(secure_broker)
    create_topics(as_["admin"])
    apply_acls(as_["admin"])

    now = time.time()
    w0 = window_start(now - 1000, 3600) - 2 * 3600
    users = [f"u{i:02d}" for i in range(12)]  # >= k = 10 at one place: a published region
    consents = [{"user_id": u, "updated_at": format_ts(now - 86400), "partner_sharing": True} for u in users]
    pings = [{"user_id": u, "ts": int((w0 + 600 + 20 * i + j) * 1000), "lat": SPOT[0] + j * 2e-4, "lon": SPOT[1],
              "accuracy_m": 5.0} for i in range(3) for j, u in enumerate(users)]
    closers = [{"user_id": u, "ts": int((w0 + 2 * 3600 + 400) * 1000), "lat": SPOT[0], "lon": SPOT[1],
                "accuracy_m": 500.0} for u in users]  # close the window; too inaccurate to cross
    with running_workers(as_["pipeline"], count=1) as workers:
        prod = clients.producer(as_["producer"], linger_ms=5)
        for doc in consents:
            send_json(prod, base.topic("consents"), doc["user_id"], doc)
        prod.flush()
        wait_received(as_["pipeline"], {"consents": len(consents)})
        for doc in pings + closers:
            send_json(prod, base.topic("geo-pings"), doc["user_id"], doc)
        send_json(prod, base.topic("geo-pings"), "u00", b"{not json")  # a dead letter
        prod.flush()
        prod.close()
        wait_received(as_["pipeline"], {"geo-pings": len(pings) + len(closers) + 1})
        _wait_for_records(as_["partner"], "partner-statistics", group="partner")
        time.sleep(1.5)  # the counters table is written twice a second
        port = workers[0].args[workers[0].args.index("--web-port") + 1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            metrics = (page.headers["Content-Type"], page.read().decode())
    return as_, pings, metrics


def secure_broker_protocol(local: Settings) -> str:
    """The protocol of the secured broker's client files: SASL_SSL once it has TLS material."""
    return "SASL_SSL" if (broker.paths_for(local).root / "tls" / "ca.pem").exists() else "SASL_PLAINTEXT"


def _read_as(settings: Settings, name: str, group: str, timeout_s: float = 60) -> list[dict]:
    """Records of topic `name` read through the principal's own consumer group, once some arrived."""
    consumer = clients.consumer(settings, group_id=settings.topic(group), auto_offset_reset="earliest",
                                enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        consumer.subscribe([settings.topic(name)])
        deadline = time.monotonic() + timeout_s
        records: list[dict] = []
        while time.monotonic() < deadline:
            got = list(consumer)
            records += [json.loads(r.value) for r in got if r.value is not None]
            if records and not got:
                break
        return records
    finally:
        consumer.close()


def _wait_for_records(settings: Settings, name: str, group: str) -> list[dict]:
    records = _read_as(settings, name, group, timeout_s=90)
    assert records, f"nothing on {name} for {settings.client_properties}"
    return records


def _denied_describe(settings: Settings, topics: list[str]) -> dict[str, int]:
    """The describe error code of each topic for this principal (29: topic authorization failed)."""
    admin = clients.admin_client(settings)
    try:
        return {d["name"]: d["error_code"] for d in admin.describe_topics(topics)}
    finally:
        admin.close()


def _pipeline_topics(as_: dict[str, Settings]) -> list[str]:
    """Every topic of this run on the broker (inputs, outputs, internal, changelogs, Faust's), as the admin lists them."""
    admin = clients.admin_client(as_["admin"])
    try:
        s = as_["admin"]
        return sorted(t for t in admin.list_topics() if t.startswith((s.topic_prefix, s.app_id)))
    finally:
        admin.close()


def _records_held(settings: Settings, topic: str) -> int:
    consumer = clients.consumer(settings, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()


def test_the_pipeline_runs_end_to_end_as_the_pipeline_principal(run):
    as_, pings, _ = run
    counters = read_counters(as_["pipeline"]).topics
    assert counters["geo-pings"].received == len(pings) + 12 + 1 and counters["geo-pings"].reconciles
    assert counters["geo-pings"].rejected == 1
    crossings = _wait_for_records(as_["crossings-reader"], "crossings", group="crossings-reader")
    reported = {tuple(sorted((r["user_id"], r["other_user_id"]))) for r in crossings if r["type"] == "crossing"}
    df = pd.DataFrame(pings)
    df["ts"] = df["ts"] / 1000
    assert reported == brute_force_pairs(df, CrossingParams()) and len(reported) == 66
    regions = _read_as(as_["partner"], "partner-statistics", group="partner")
    assert regions and all(r["users"] >= r["k"] == 10 for r in regions)
    assert sum(r["users"] for r in regions if r["window_start"] == regions[0]["window_start"]) <= 12


def test_partner_is_denied_every_topic_with_personal_data(run):
    as_, _, _ = run
    s = as_["partner"]
    statistics = {s.topic("partner-statistics"), s.topic("connection-statistics")}
    others = [t for t in _pipeline_topics(as_) if t not in statistics]
    expected = {s.topic(n) for n in PERSONAL} | {s.topic(spec.name) for spec in topic_specs(s) if spec.internal}
    assert expected <= set(others)
    assert any(t.endswith("-changelog") for t in others) and any("__assignor" in t for t in others)
    codes = _denied_describe(s, others)
    assert codes == dict.fromkeys(others, TOPIC_AUTHORIZATION_FAILED)  # READ implies DESCRIBE: no READ either
    assert _denied_describe(s, sorted(statistics)) == dict.fromkeys(sorted(statistics), 0)
    # And an actual read of raw pings, which hold records, gets none of them.
    pings = s.topic("geo-pings")
    assert _records_held(as_["admin"], pings) > 0
    consumer = clients.consumer(s, group_id=None, consumer_timeout_ms=3000)
    try:
        consumer.assign([TopicPartition(pings, p) for p in range(s.partitions)])
        consumer.seek_to_beginning()
        assert list(consumer) == []
    except TopicAuthorizationFailedError:
        pass
    finally:
        consumer.close()


def test_producer_writes_inputs_but_reads_nothing(run):
    as_, _, _ = run
    s = as_["producer"]
    topics = _pipeline_topics(as_)
    inputs = {s.topic(n) for n in ("geo-pings", "connection-logs", "consents")}
    codes = _denied_describe(s, topics)
    assert {t for t, code in codes.items() if code == 0} == inputs
    assert all(code == TOPIC_AUTHORIZATION_FAILED for t, code in codes.items() if t not in inputs)
    consumer = clients.consumer(s, group_id=None, consumer_timeout_ms=3000)
    try:
        consumer.assign([TopicPartition(t, p) for t in sorted(inputs) for p in range(s.partitions)])
        consumer.seek_to_beginning()
        with pytest.raises(TopicAuthorizationFailedError):
            list(consumer)
    finally:
        consumer.close()


def test_crossings_reader_reads_crossings_only(run):
    as_, _, _ = run
    s = as_["crossings-reader"]
    topics = _pipeline_topics(as_)
    codes = _denied_describe(s, topics)
    assert {t for t, code in codes.items() if code == 0} == {s.topic("crossings")}


def test_anonymous_and_wrong_password_are_refused(run, secure_broker):
    as_, _, _ = run
    props = clients.read_properties(as_["partner"].client_properties)
    right = clients.auth_from_properties(props)
    wrong = clients.ClientAuth(protocol=right.protocol, mechanism=right.mechanism, username=right.username,
                               password=right.password + "x")
    bootstrap = secure_broker.bootstrap_servers

    assert _can_list_topics(bootstrap, right), "the control: the right password is accepted"
    assert not _can_list_topics(bootstrap, wrong)
    assert not _can_list_topics(bootstrap, clients.ClientAuth())  # anonymous, plaintext


def _can_list_topics(bootstrap: str, auth: clients.ClientAuth) -> bool:
    """Whether a client with `auth` gets a topic list from the cluster (False: refused or never connected)."""
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=4000, request_timeout_ms=4000,
                                 **auth.kafka_python())
    except KafkaError:
        return False
    try:
        return bool(admin.list_topics())
    finally:
        admin.close()


def test_the_worker_serves_prometheus_metrics(run):
    from prometheus_client.parser import text_string_to_metric_families

    as_, pings, (content_type, text) = run
    s = as_["pipeline"]
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.pop("app") == s.app_id
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def total(name: str, **labels) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    pings_topic = s.topic("geo-pings")
    assert total("crosspaths_ingest_messages_total", topic=pings_topic, outcome="received") == len(pings) + 12 + 1
    assert total("crosspaths_ingest_messages_total", topic=pings_topic, outcome="rejected") == 1
    assert total("crosspaths_rejected_total", topic=pings_topic) == 1
    assert total("crosspaths_crossing_records_emitted_total") == 2 * 66
    assert total("crosspaths_windows_published_total", topic=s.topic("partner-statistics")) >= 1
    assert total("crosspaths_stage_seconds_total", stage=s.topic("crossing-cells")) > 0
    lag = {dict(ls)["topic"] for (n, ls), _ in samples.items() if n == "crosspaths_consumer_lag"}
    assert pings_topic in lag and s.topic("crossing-pairs") in lag


def test_a_rotated_password_replaces_the_old_one(run, secure_broker):
    """Last in this file: it changes the crossings-reader's password."""
    from streams.tools.credentials import rotate_password

    as_, _, _ = run
    paths = broker.paths_for(secure_broker)
    reader = as_["crossings-reader"]
    old = clients.client_auth(reader)
    admin = clients.admin_client(as_["admin"])
    try:
        written = rotate_password(admin, paths.credentials, paths.clients, "crossings-reader")
    finally:
        admin.close()
    new = clients.client_auth(reader)  # the same file, rewritten
    assert written == reader.client_properties and new.password != old.password
    assert json.loads(paths.credentials.read_text())["crossings-reader"] == new.password
    assert _can_list_topics(secure_broker.bootstrap_servers, new)
    assert not _can_list_topics(secure_broker.bootstrap_servers, old)
    with pytest.raises(ValueError, match="principal='admin'"):
        rotate_password(None, paths.credentials, paths.clients, "admin")
