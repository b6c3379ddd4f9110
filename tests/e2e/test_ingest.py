"""End to end on the real broker: consent gate, dead letters with raw bytes, reconciled counters, poison."""
from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.request
from collections import Counter

import pytest
from kafka import KafkaConsumer, TopicPartition

from schemas.events import Limits, Rejection, decode
from schemas.timefmt import format_ts
from streams.tools.demo import wait_for_drain
from tests.e2e.helpers import consume_all, producer, running_workers, send_json, wait_received
from tests.hostile import hostile_corpus

pytestmark = pytest.mark.e2e

NOW = time.time()
CONSENTS = [
    {"user_id": "alice", "updated_at": format_ts(NOW - 3600)},                       # defaults: geolocation on
    {"user_id": "bob", "updated_at": format_ts(NOW - 3600), "geolocation": False},   # opted out
    {"user_id": "carol", "updated_at": format_ts(NOW - 3600), "crossings": False},   # geolocation still on
    {"user_id": "dave", "updated_at": format_ts(NOW - 3600), "deleted": True},       # account deleted
]
MALFORMED = [
    ("geo-pings", b"alice", b"", "empty"),
    ("geo-pings", b"alice", b'{"user_id": "alice", "ts": ', "not_json"),
    ("geo-pings", b"alice", b"\xff\xfe\x00garbage", "not_utf8"),
    ("geo-pings", b"alice", json.dumps({"user_id": "alice", "ts": int(NOW * 1000), "lat": 123.4, "lon": 2}).encode(),
     "out_of_range"),
    ("geo-pings", b"alice", json.dumps({"user_id": "alice", "lat": 48.8, "lon": 2.3}).encode(), "missing_field"),
    ("geo-pings", b"mallory", json.dumps({"user_id": "alice", "ts": int(NOW * 1000), "lat": 1, "lon": 2}).encode(),
     "key_mismatch"),
    ("geo-pings", b"alice", json.dumps({"user_id": "alice", "ts": int((NOW + 86400) * 1000), "lat": 1,
                                        "lon": 2}).encode(), "future_timestamp"),
    ("connection-logs", b"alice", json.dumps({"user_id": "alice", "ts": int(NOW * 1000), "ip": "1.2.3.256",
                                              "user_agent": "x"}).encode(), "bad_ip"),
    ("consents", b"erin", json.dumps({"user_id": "erin", "updated_at": "tomorrow"}).encode(), "bad_timestamp"),
]


def ping(user: str, i: int) -> dict:
    return {"user_id": user, "ts": int((NOW - 600 + i) * 1000), "lat": 48.85 + i * 1e-5, "lon": 2.35,
            "accuracy_m": 10}


def test_gate_dead_letters_and_counters(pipeline_settings):
    s = pipeline_settings
    with running_workers(s, count=1) as workers:
        prod = producer(s)
        for c in CONSENTS:
            send_json(prod, s.topic("consents"), c["user_id"], c)
        prod.flush()
        # Consent applies to messages processed after it; dave's deletion also writes a tombstone.
        wait_received(s, {"consents": len(CONSENTS) + 1})

        per_user = 25
        for user in ("alice", "bob", "carol", "dave"):
            for i in range(per_user):
                send_json(prod, s.topic("geo-pings"), user, ping(user, i))
        send_json(prod, s.topic("connection-logs"), "alice",
                  {"user_id": "alice", "ts": int(NOW * 1000), "ip": "192.0.2.7", "user_agent": "Mozilla/5.0",
                   "event": "login"})
        send_json(prod, s.topic("connection-logs"), "dave",
                  {"user_id": "dave", "ts": int(NOW * 1000), "ip": "192.0.2.8", "user_agent": "Mozilla/5.0"})
        for topic, key, value, _ in MALFORMED:
            prod.send(s.topic(topic), key=key, value=value)
        prod.flush()

        # consents: the records above, the malformed one, and the tombstone written after dave's erasure
        wait_received(s, {"geo-pings": 4 * per_user + 7, "connection-logs": 3, "consents": len(CONSENTS) + 2})

        # The counters reconcile and say exactly what the gate did.
        out = json.loads(_cli_counters(s))
        assert out["geo-pings"] == {"received": 107, "accepted": 50, "rejected": 7, "dropped_consent": 50,
                                    "reconciles": True}
        assert out["connection-logs"] == {"received": 3, "accepted": 1, "rejected": 1, "dropped_consent": 1,
                                          "reconciles": True}
        assert out["consents"] == {"received": 6, "accepted": 5, "rejected": 1, "dropped_consent": 0,
                                   "reconciles": True}

        # Every rejected message is a dead letter with its raw bytes, position and reason.
        letters = [json.loads(r.value) for r in consume_all(s, "dead-letters", min_count=len(MALFORMED))]
        assert len(letters) == len(MALFORMED)
        expected = {(s.topic(t), k, v): reason for t, k, v, reason in MALFORMED}
        for letter in letters:
            raw = base64.b64decode(letter["value_b64"]) if letter.get("value_b64") is not None else b""
            key = base64.b64decode(letter["key_b64"])
            assert expected.pop((letter["source_topic"], key, raw)) == letter["reason"]
            assert letter["message"]
            assert _raw_at(s, letter["source_topic"], letter["partition"], letter["offset"]) == raw
        assert not expected

        # The worker's web endpoint serves the same counters.
        port = workers[0].args[-1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/counters/", timeout=5) as r:
            local = json.loads(r.read())
        assert sum(v["received"] for k, v in local.items() if k.startswith(s.topic("geo-pings"))) == 107


def _cli_counters(s) -> str:
    import subprocess
    import sys

    from streams.tools.demo import worker_env

    return subprocess.run([sys.executable, "-m", "streams.cli", "stats", "counters", "--json"],
                          env=worker_env(s, 0), capture_output=True, text=True, check=True).stdout


def _raw_at(s, topic: str, partition: int, offset: int) -> bytes:
    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, group_id=None, consumer_timeout_ms=5000)
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, offset)
    record = next(iter(consumer))
    consumer.close()
    return record.value or b""


INPUTS = {"geo-pings": "ping", "connection-logs": "connection-log", "consents": "consent"}
INTERNAL = ("crossing-cells", "crossing-pairs", "stats-cells", "stats-connections", "erasure-reports")


def test_the_largest_messages_and_a_hostile_corpus_stop_no_worker(pipeline_settings):
    """The largest message the broker accepts on every input and internal topic, then the hostile corpus.

    The worker stays up and still handles later good messages; every message is accounted for:
    inputs by counters that reconcile (and one dead letter per rejection), internal messages by a
    dead letter with the size and SHA-256 of the whole message (not the message itself).
    """
    from kafka import KafkaProducer
    from kafka.errors import MessageSizeTooLargeError

    s = pipeline_settings
    with running_workers(s, count=1) as workers:
        limit = _max_message_bytes(s, s.topic("geo-pings"))
        size = limit - 100  # the record batch adds ~70 bytes of headers and lengths, and the key
        probe = KafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all", max_request_size=4 * limit)
        with pytest.raises(MessageSizeTooLargeError):  # so `size` is (almost) the largest the broker takes
            probe.send(s.topic("geo-pings"), key=b"alice", value=b"x" * limit).get(timeout=30)
        probe.close()  # a refused batch is fatal to kafka-python's producer
        big = KafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all", max_request_size=4 * limit)
        payload = {}
        for name in (*INPUTS, *INTERNAL):
            # A ping whose user_id alone is ~1 MB (the message), garbage for the internal topics.
            head, tail = b'{"user_id": "', b'", "ts": 1}'
            value = head + b"a" * (size - len(head) - len(tail)) + tail
            payload[name] = value
            big.send(s.topic(name), key=b"alice", value=value, partition=None if name in INPUTS else 0).get(timeout=30)
        big.close()

        prod = producer(s)
        corpus = [(kind, raw) for kind, _, raw, _ in hostile_corpus()]
        topic_of = {kind: topic for topic, kind in INPUTS.items()}
        for kind, raw in corpus:
            prod.send(s.topic(topic_of[kind]), key=b"u-1", value=raw)
        now = time.time()  # later good messages: two users crossing paths, one ping on every partition
        walkers = _one_user_per_partition(s.partitions)
        for user, dlat in [("alice", 0.0), ("bob", 0.0002)] * 3 + [(w, 0.05) for w in walkers]:
            send_json(prod, s.topic("geo-pings"), user, {"user_id": user, "ts": int((now - 120) * 1000),
                                                         "lat": 48.85 + dlat, "lon": 2.35, "accuracy_m": 10})
        prod.flush()

        sent = Counter(topic_of[kind] for kind, _ in corpus)
        sent.update({name: 1 for name in INPUTS})
        sent["geo-pings"] += 6 + len(walkers)
        wait_received(s, dict(sent), timeout_s=180)
        crossings = [json.loads(r.value) for r in consume_all(s, "crossings", min_count=2, timeout_s=90)]
        assert {(c["user_id"], c["other_user_id"]) for c in crossings if c["type"] == "crossing"} >= {
            ("alice", "bob"), ("bob", "alice")}
        assert wait_for_drain(s, timeout_s=120, quiet_s=2)
        # Every partition has moved the detector's clock past this one: dead-lettered late, raw bytes kept.
        late_ping = json.dumps({"user_id": "alice", "ts": int((now - 3600) * 1000), "lat": 48.85, "lon": 2.35,
                                "accuracy_m": 10}).encode()
        prod.send(s.topic("geo-pings"), key=b"alice", value=late_ping)
        prod.flush()
        sent["geo-pings"] += 1
        wait_received(s, dict(sent), timeout_s=60)
        assert wait_for_drain(s, timeout_s=120, quiet_s=2)
        assert workers[0].poll() is None, "the worker stopped"

        counters = json.loads(_cli_counters(s))
        letters = [json.loads(r.value) for r in consume_all(s, "dead-letters", min_count=len(INTERNAL))]
        assert max(len(json.dumps(letter)) for letter in letters) < 16 * 1024
        for name, kind in INPUTS.items():
            c = counters[name]
            assert c["received"] == sent[name] and c["reconciles"], (name, c)
            rejected_by_decode = sum(isinstance(decode(k, raw, Limits(), key=b"u-1"), Rejection)
                                     for k, raw in corpus if k == kind) + 1  # + the largest message
            assert c["rejected"] >= rejected_by_decode, (name, c)  # consents may also be stale (late_event)
            mine = [letter for letter in letters if letter["source_topic"] == s.topic(name)]
            # late_event: a stale consent is rejected by ingest; a late ping or log by a later stage (not counted)
            assert sum(letter["reason"] != "late_event" or name == "consents" for letter in mine) == c["rejected"], name
        [late] = [letter for letter in letters if letter["reason"] == "late_event"
                  and letter["source_topic"] == s.topic("geo-pings")]
        assert (base64.b64decode(late["value_b64"]), late["value_size"]) == (late_ping, len(late_ping))
        assert base64.b64decode(late["key_b64"]) == b"alice"
        for name in (*INPUTS, *INTERNAL):
            [letter] = [letter for letter in letters if letter["source_topic"] == s.topic(name)
                        and letter.get("value_size") == size]
            assert letter["reason"] == ("oversized" if name in INPUTS else "processing_error"), letter
            assert letter["value_sha256"] == hashlib.sha256(payload[name]).hexdigest()
            assert base64.b64decode(letter["value_b64"]) == payload[name][:s.dead_letter_prefix_bytes]
            assert _raw_at(s, letter["source_topic"], letter["partition"], letter["offset"]) == payload[name]


def _one_user_per_partition(partitions: int) -> list[str]:
    """User ids whose messages land on each input partition (Kafka's default partitioner)."""
    from kafka.partitioner.default import murmur2

    users: dict[int, str] = {}
    for i in range(1000):
        users.setdefault((murmur2(f"walker-{i}".encode()) & 0x7FFFFFFF) % partitions, f"walker-{i}")
    return list(users.values())


def _max_message_bytes(s, topic: str) -> int:
    """The largest record batch the broker takes on `topic` (its max.message.bytes)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        return int(configs["topic"][topic]["max.message.bytes"]["value"])
    finally:
        admin.close()
