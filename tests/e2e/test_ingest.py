"""End to end on the real broker: consent gate, dead letters with raw bytes, reconciled counters."""
from __future__ import annotations

import base64
import json
import time
import urllib.request

import pytest
from kafka import KafkaConsumer, TopicPartition

from schemas.timefmt import format_ts
from tests.e2e.helpers import consume_all, producer, running_workers, send_json, wait_received

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
