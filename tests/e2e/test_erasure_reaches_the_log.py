"""End to end on the real broker: after an erasure's `all_copies_gone_by`, no byte of the user is left.

Short lifetimes are set for the test (raw topics 72 s, compaction lag 15 s, tombstones 10 s, 30 s
for the broker's cleaner to reach a log per pass), the broker checks retention every 5 s
(tests/conftest.py). A user with crossings, partner-sharing pings,
logins and a rejected message is erased while others go on using the app; once the receipt's
`all_copies_gone_by` has passed, every topic and changelog of the deployment is read from the
beginning: no record holds the user's id, any of their statistics pseudonyms, or their coordinates
(as text or as packed doubles), also inside the base64 payloads of dead letters; the other users'
crossings and the published statistics are still there.
"""
from __future__ import annotations

import base64
import json
import os
import struct
import time
import uuid

import pytest

from anonymizers.pseudonym import Pseudonymizer
from anonymizers.retention import receipt_subject
from schemas.outputs import crossing_key
from schemas.timefmt import format_ts, parse_ts
from streams.clients import admin_client
from streams.settings import Settings, pseudonym_secret
from streams.tools.audit import audit_user
from streams.tools.kafkaio import latest_by_key, read_topic
from tests.conftest import TEST_RETENTION_CHECK_MS
from tests.e2e.helpers import consume_all, producer, running_workers, send_json, wait_received

pytestmark = pytest.mark.e2e

UA = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0.0.0 Mobile Safari/537.36"
ALICE_LAT, ALICE_LON = 48.8512347, 2.3487653  # distinctive digits: findable as text in any record
OTHERS = ("bob", "carol", "dave", "frank")  # with 2 partitions, frank's records go where alice's did


@pytest.fixture
def short_lived(kafka_bootstrap, tmp_path) -> Settings:
    run = uuid.uuid4().hex[:8]
    secret = tmp_path / "pseudonym.key"
    secret.write_bytes(os.urandom(32))
    return Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"g{run}.", app_id=f"crosspaths-g{run}",
                    partitions=2, home=tmp_path, pseudonym_secret_file=secret, k=2, stats_window_s=60,
                    stats_lateness_s=5, crossing_cooldown_s=10.0, raw_lifetime_hours=0.02, compaction_lag_s=15,
                    tombstone_retention_s=10, cleaner_slack_s=30, broker_retention_check_ms=TEST_RETENTION_CHECK_MS,
                    dp_epsilon=0)  # exact k-anonymous counts: the user's partner-statistics record is waited for


def _ping(user: str, ts: float, lat: float, lon: float) -> dict:
    return {"user_id": user, "ts": int(ts * 1000), "lat": lat, "lon": lon, "accuracy_m": 5.0}


def _others_go_on(s: Settings, prod, t: float, i: int) -> None:
    """The others keep using the app where alice was and elsewhere: pings together (crossings), logins,
    consent updates. In a live deployment every partition gets records all the time; here they must."""
    for j, user in enumerate(OTHERS):
        lat, lon = (ALICE_LAT + 1e-3, ALICE_LON + 1e-3) if j % 2 == 0 else (48.8600, 2.3400)
        send_json(prod, s.topic("geo-pings"), user, _ping(user, t, lat + j * 1e-4, lon))
        send_json(prod, s.topic("connection-logs"), user, {"user_id": user, "ts": int(t * 1000), "ip": "192.0.2.7",
                                                            "user_agent": UA, "event": "login"})
    user = OTHERS[i % len(OTHERS)]
    send_json(prod, s.topic("consents"), user, {"user_id": user, "updated_at": format_ts(t),
                                                "partner_sharing": True})
    prod.flush()


def _needles(s: Settings, start: float, end: float) -> dict[str, bytes]:
    """What would identify alice: her id, every pseudonym of a window she was in, her coordinates."""
    pseudo = Pseudonymizer(pseudonym_secret(s), s.pseudonym_rotation_s)
    windows = range(int(start // s.stats_window_s) - 1, int(end // s.stats_window_s) + 2)
    needles = {"user id": b"alice", "lat text": repr(ALICE_LAT).encode(), "lon text": repr(ALICE_LON).encode(),
               "lat double": struct.pack("<d", ALICE_LAT), "lon double": struct.pack("<d", ALICE_LON)}
    for w in windows:
        needles[f"pseudonym {w}"] = pseudo.pseudonym("alice", w * s.stats_window_s).encode()
    return needles


def _embedded(value: bytes) -> list[bytes]:
    """Base64 payloads of a JSON record (dead letters carry raw bytes so), decoded."""
    try:
        doc = json.loads(value)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    return [base64.b64decode(v) for k, v in doc.items() if k.endswith("_b64") and isinstance(v, str)]


def _scan(s: Settings, topics: list[str], needles: dict[str, bytes]) -> tuple[list, int]:
    """(topic, partition, offset, what) of every record holding a needle, and how many records were read."""
    left, scanned = [], 0
    for topic in topics:
        for rec in read_topic(s, topic):
            scanned += 1
            blobs = [rec.key or b"", rec.value or b"", *_embedded(rec.value or b"{}")]
            left += [(topic, rec.partition, rec.offset, what) for what, needle in needles.items()
                     if any(needle in blob for blob in blobs)]
    return left, scanned


def test_an_erased_user_leaves_no_byte_on_any_topic_after_all_copies_gone_by(short_lived):
    s = short_lived
    start = time.time()
    with running_workers(s, count=1):
        prod = producer(s)
        for user in ("alice", *OTHERS):
            send_json(prod, s.topic("consents"), user, {"user_id": user, "updated_at": format_ts(start - 600),
                                                        "partner_sharing": True})
        prod.flush()
        wait_received(s, {"consents": 1 + len(OTHERS)})
        for i in range(6):  # alice and bob meet; carol and dave meet elsewhere
            t = start - 150 + 20 * i
            send_json(prod, s.topic("geo-pings"), "alice", _ping("alice", t, ALICE_LAT, ALICE_LON))
            send_json(prod, s.topic("geo-pings"), "bob", _ping("bob", t, ALICE_LAT + 2e-4, ALICE_LON))
            for j, user in enumerate(("carol", "dave")):
                send_json(prod, s.topic("geo-pings"), user, _ping(user, t, 48.8600 + j * 1e-4, 2.3400))
            send_json(prod, s.topic("connection-logs"), "alice", {
                "user_id": "alice", "ts": int(t * 1000), "ip": "198.51.100.23", "user_agent": UA, "event": "login"})
        bad = {**_ping("alice", start - 60, ALICE_LAT, ALICE_LON), "lat": 999.0, "note": "alice at " + repr(ALICE_LAT)}
        send_json(prod, s.topic("geo-pings"), "alice", bad)  # rejected: a dead letter with alice's raw bytes
        prod.flush()
        wait_received(s, {"geo-pings": 25, "connection-logs": 6})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            shown = latest_by_key(s, s.topic("crossings"))
            if shown.get(crossing_key("bob", "alice")) and shown.get(crossing_key("dave", "carol")):
                break
            time.sleep(1)
        assert shown.get(crossing_key("bob", "alice")), "alice has crossings before her erasure"
        letters = [json.loads(r.value) for r in consume_all(s, "dead-letters", min_count=1, timeout_s=30)]
        assert any(b"alice" in base64.b64decode(d.get("value_b64") or "") for d in letters)

        send_json(prod, s.topic("consents"), "alice", {"user_id": "alice", "updated_at": format_ts(time.time()),
                                                       "deleted": True})
        prod.flush()
        receipt, i = None, 0
        while receipt is None and time.monotonic() < deadline + 90:
            _others_go_on(s, prod, time.time(), i)
            i += 1
            found = [json.loads(r.value) for r in consume_all(s, "erasure-receipts", timeout_s=2)]
            receipt = next((r for r in found if r["subject"] == receipt_subject("alice")), None)
        assert receipt is not None, "the erasure completes"
        gone_by = parse_ts(receipt["all_copies_gone_by"])
        assert gone_by - parse_ts(receipt["completed_at"]) <= 150  # the short lifetimes set above
        # The audit lists, per topic, the copies left and when the last one goes: never after the receipt's date.
        audit = audit_user(s, "alice")
        assert audit.clean, audit.state
        copies = {line.split(":")[0]: parse_ts(line.split("the last gone by ")[1].split(" ")[0]) for line in audit.logs}
        assert {s.topic("geo-pings"), s.topic("dead-letters"), s.topic("crossings"), s.topic("consents")} <= set(copies)
        assert max(copies.values()) <= gone_by + 1
        while time.time() < gone_by:  # the app goes on meanwhile: segments roll, the cleaner runs
            _others_go_on(s, prod, time.time(), i)
            i += 1
            time.sleep(2)

        admin = admin_client(s, client_id="crosspaths-test-scan")
        try:
            topics = sorted(t for t in admin.list_topics() if t.startswith((s.topic_prefix, s.app_id)))
        finally:
            admin.close()
        needles = _needles(s, start - 600, time.time())
        left, scanned = _scan(s, topics, needles)
        late = time.time() - gone_by
        print(f"scanned {scanned} records on {len(topics)} topics, {late:.0f} s after all_copies_gone_by")
        assert scanned > 100 and len(topics) >= 20
        where = sorted({(topic, partition, what) for topic, partition, _, what in left})
        assert left == [], f"copies of alice still on the broker after all_copies_gone_by: {where}"
        assert audit_user(s, "alice").logs == []

        # The others are intact: their crossings are shown, statistics were published.
        shown = latest_by_key(s, s.topic("crossings"))
        assert shown.get(crossing_key("dave", "carol")) and shown.get(crossing_key("carol", "dave"))
        assert consume_all(s, "partner-statistics", min_count=1, timeout_s=30)
