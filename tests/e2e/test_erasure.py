"""End to end on the real broker: account deletion purges everything; inactivity notice then erasure."""
from __future__ import annotations

import json
import time

import pytest
from kafka.partitioner.default import murmur2

from anonymizers.retention import erasure_tag, receipt_subject
from schemas.outputs import crossing_key
from schemas.timefmt import format_ts, parse_ts
from streams.tools.audit import audit_user, export_user
from streams.tools.kafkaio import latest_by_key
from streams.tools.report import read_counters
from streams.settings import pseudonym_secret
from streams.topics import erasure_horizons
from tests.e2e.helpers import consume_all, producer, running_workers, send_json, wait_received

pytestmark = pytest.mark.e2e

UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile/15E148 Safari/604.1"


def _wait(fetch, predicate, timeout_s=90):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if predicate(value) or time.monotonic() > deadline:
            return value
        time.sleep(1)


def _docs(s, topic):
    return [(r.key.decode(), json.loads(r.value)) for r in consume_all(s, topic) if r.value is not None]


def test_account_deletion_erases_every_trace(pipeline_settings):
    s = pipeline_settings
    now = time.time()
    t0 = now - 1800
    with running_workers(s, count=1) as workers:
        url = f"http://127.0.0.1:{workers[0].args[-1]}"
        prod = producer(s)
        for u in ("alice", "bob"):
            send_json(prod, s.topic("consents"), u, {"user_id": u, "updated_at": format_ts(now - 3600),
                                                      "partner_sharing": True})
        prod.flush()
        wait_received(s, {"consents": 2})
        for i in range(5):
            for j, u in enumerate(("alice", "bob")):
                send_json(prod, s.topic("geo-pings"), u, {"user_id": u, "ts": int((t0 + 60 * i + j) * 1000),
                                                          "lat": 48.8566 + j * 1e-4, "lon": 2.3522, "accuracy_m": 5})
            send_json(prod, s.topic("connection-logs"), "alice", {
                "user_id": "alice", "ts": int((t0 + 60 * i) * 1000), "ip": "198.51.100.23", "user_agent": UA,
                "event": "login"})
        prod.flush()
        crossings = _wait(lambda: _docs(s, "crossings"), lambda d: any(v["type"] == "crossing" for _, v in d))
        assert any(k == "bob|alice" and v.get("other_user_id") == "alice" for k, v in crossings)
        before = audit_user(s, "alice", (url,))
        assert not before.clean, "the user is in state before the deletion"
        # An access request: everything held about alice, in one document.
        export = export_user(s, "alice")
        assert export["consent"]["partner_sharing"] is True and export["erasure_receipts"] == []
        assert export["rejected_messages"] == [] and export["inactivity_notices"] == []
        assert sorted(p["record"]["ts"] for p in export["geo_pings"]) == sorted(
            int((t0 + 60 * i) * 1000) for i in range(5))
        assert len(export["connection_logs"]) == 5 and all(p["record"]["user_id"] == "alice" for p in export["geo_pings"])
        assert [c["other_user_id"] for c in export["crossings_shown"]] == ["bob"]
        assert all(time.time() < parse_ts(p["gone_by"]) <= time.time() + 24 * 3600 for p in export["geo_pings"])

        send_json(prod, s.topic("consents"), "alice", {"user_id": "alice", "updated_at": format_ts(time.time()),
                                                       "deleted": True})
        prod.flush()
        receipts = _wait(lambda: _docs(s, "erasure-receipts"), lambda d: bool(d))
        assert [k for k, _ in receipts] == [receipt_subject("alice")]  # the receipt names her by a hash only
        assert b"alice" not in consume_all(s, "erasure-receipts")[0].value
        purged = receipts[0][1]["purged"]
        assert purged["consent_state"] == 1 and purged["activity"] == 1
        assert purged["detector_pings"] >= 5 and purged["crossing_pairs"] == 1
        assert purged["location_memberships"] >= 1 and purged["connection_memberships"] >= 1
        assert receipts[0][1]["reason"] == "account_deleted"
        # The receipt says when the last copy is gone: the slowest topic's declared lifetime after it.
        receipt = receipts[0][1]
        horizons = erasure_horizons(s)
        completed = parse_ts(receipt["completed_at"])
        assert parse_ts(receipt["all_copies_gone_by"]) == pytest.approx(completed + max(horizons.values()) / 1000, abs=0.01)
        assert {t: parse_ts(v) - completed for t, v in receipt["copies_gone_by"].items()} == pytest.approx(
            {t: ms / 1000 for t, ms in horizons.items()}, abs=0.01)
        assert parse_ts(receipt["copies_gone_by"][s.topic("geo-pings")]) - completed <= 24 * 3600
        # The draft was kept in a changelogged table until the receipt was out (a restarted worker
        # would still complete it), then tombstoned; the changelog never held alice's id, only her
        # keyed hash (the draft's key, and the done marker's).
        drafts_topic = f"{s.app_id}-receipt-drafts-changelog"
        assert drafts_topic in receipts[0][1]["tombstones"]
        draft_key = json.dumps(f"draft|{erasure_tag(pseudonym_secret(s), 'alice')}").encode()
        drafts = _wait(lambda: latest_by_key(s, drafts_topic), lambda d: draft_key in d and d[draft_key] is None)
        assert draft_key in drafts and drafts[draft_key] is None
        live = {k: v for k, v in drafts.items() if v is not None}
        assert [k[:6] for k in live] == [b'"done|']
        assert not any(b"alice" in r.key + (r.value or b"") for r in consume_all(s, drafts_topic, timeout_s=5))

        # The other party is told to stop showing alice, and alice's own view goes: both keys of the
        # pair are tombstoned on the compacted topic, so compaction removes the records too.
        crossing_records = latest_by_key(s, s.topic("crossings"))
        assert crossing_records[crossing_key("bob", "alice")] is None
        assert crossing_records[crossing_key("alice", "bob")] is None
        assert receipt["crossings_tombstoned"] == 1
        # Every pair partition keeps a guard against candidates computed before the deletion, in a
        # changelogged table (a restarted worker keeps it), by keyed hash: never the id.
        guards = _wait(lambda: latest_by_key(s, f"{s.app_id}-pair-guard-changelog"),
                       lambda g: len(g) >= s.partitions)
        assert len(guards) == s.partitions and "alice" not in repr(guards)

        # Later events of the deleted user are dropped and counted.
        dropped_before = read_counters(s).topics["geo-pings"].dropped_consent
        send_json(prod, s.topic("geo-pings"), "alice", {"user_id": "alice", "ts": int(time.time() * 1000),
                                                        "lat": 48.8566, "lon": 2.3522})
        send_json(prod, s.topic("connection-logs"), "alice", {"user_id": "alice", "ts": int(time.time() * 1000),
                                                              "ip": "198.51.100.23", "user_agent": UA})
        send_json(prod, s.topic("consents"), "alice", {"user_id": "alice", "updated_at": format_ts(time.time()),
                                                       "crossings": True})
        prod.flush()
        # consents: 2 + the deletion + its tombstone + the late record + the tombstone that erases it again
        wait_received(s, {"geo-pings": 11, "connection-logs": 6, "consents": 6})
        counters = read_counters(s)
        assert counters.topics["geo-pings"].dropped_consent == dropped_before + 1
        assert counters.topics["connection-logs"].dropped_consent == 1
        assert counters.topics["consents"].dropped_consent == 1

        time.sleep(2)
        after = audit_user(s, "alice", (url,))
        assert after.clean, after.state
        assert any("erasure receipts" in line for line in after.expected)
        # Each append-only topic still holding alice says when its last record of her is gone.
        pings_line = next(line for line in after.logs if line.startswith(s.topic("geo-pings") + ":"))
        gone_by = parse_ts(pings_line.split("the last gone by ")[1].split(" ")[0])
        assert time.time() < gone_by <= time.time() + 24 * 3600


def _partition(user: str, partitions: int) -> int:
    return (murmur2(user.encode()) & 0x7FFFFFFF) % partitions


def test_inactivity_notice_then_erasure_with_a_controlled_clock(pipeline_settings):
    """Event time is the clock: logins three years apart trigger the notice, then the erasure."""
    s = pipeline_settings
    now = time.time()
    day = 86400
    # Users whose messages land in every input partition, so every partition's clock moves.
    movers = []
    i = 0
    while len({_partition(u, s.partitions) for u in movers}) < s.partitions:
        movers.append(f"mover{i}")
        i += 1

    def login(prod, user, ts, event="login"):
        send_json(prod, s.topic("connection-logs"), user, {"user_id": user, "ts": int(ts * 1000),
                                                            "ip": "192.0.2.1", "user_agent": UA, "event": event})

    with running_workers(s, count=1):
        prod = producer(s)
        login(prod, "sleepy", now - (3 * 365 + 60) * day)
        login(prod, "back", now - (3 * 365 + 60) * day)
        prod.flush()
        wait_received(s, {"connection-logs": 2})
        for u in movers:  # the clock reaches now - 40 days: both are 3 years + 20 days inactive
            login(prod, u, now - 40 * day, event="app_open")
        prod.flush()
        wait_received(s, {"connection-logs": 2 + len(movers)})
        notices = _wait(lambda: _docs(s, "inactivity-notices"), lambda d: len(d) >= 2)
        assert sorted(k for k, _ in notices) == ["back", "sleepy"]
        assert _docs(s, "erasure-receipts") == []

        login(prod, "back", now - 35 * day)  # "back" logs in again within the grace period
        prod.flush()
        wait_received(s, {"connection-logs": 3 + len(movers)})
        for u in movers:  # the clock passes notice + 30 days of grace
            login(prod, u, now, event="app_open")
        prod.flush()
        receipts = _wait(lambda: _docs(s, "erasure-receipts"), lambda d: bool(d))
        time.sleep(3)
        receipts = _docs(s, "erasure-receipts")
    assert [(k, v["reason"]) for k, v in receipts] == [(receipt_subject("sleepy"), "inactivity")]
    assert receipts[0][1]["purged"]["activity"] == 1


def test_a_receipt_survives_a_worker_restart_and_counts_repeated_reports_once(pipeline_settings):
    """Half of an erasure's stage reports reach one worker, the rest (some twice) its successor: one
    receipt, with each stage partition's count taken once."""
    s = pipeline_settings
    topic = s.topic("erasure-reports")
    stages = ("detector_pings", "crossing_pairs", "location_memberships", "connection_memberships")
    ingest = {"user": "zed", "stage": "ingest", "expect": len(stages) * s.partitions, "reason": "account_deleted",
              "requested_at": time.time(), "removed": {"consent_state": 1, "activity": 1, "caches": 0}}
    answers = [{"user": "zed", "stage": st, "partition": p, "removed": 1, "v": ingest["requested_at"]}
               for st in stages for p in range(s.partitions)]
    first, rest = [ingest] + answers[: len(answers) // 2], answers[len(answers) // 2:]
    drafts_topic = f"{s.app_id}-receipt-drafts-changelog"
    zed = json.dumps(f"draft|{erasure_tag(pseudonym_secret(s), 'zed')}").encode()  # drafts are keyed by hash
    prod = producer(s)

    def send(reports):
        for r in reports:
            send_json(prod, topic, "zed", r)
        prod.flush()

    with running_workers(s, count=1):
        send(first + first[1:3])  # two answers delivered twice
        draft = _wait(lambda: latest_by_key(s, drafts_topic),
                      lambda d: d.get(zed) and len(json.loads(d[zed])["answered"]) == len(first) - 1)
        assert len(json.loads(draft[zed])["answered"]) == len(first) - 1
        time.sleep(2)  # offsets committed
        assert _docs(s, "erasure-receipts") == []
    with running_workers(s, count=1):  # a new process: the draft comes back from the changelog
        send(rest + rest[:2] + [ingest])  # and some reports come again after the receipt is out
        receipts = _wait(lambda: _docs(s, "erasure-receipts"), lambda d: bool(d))
        time.sleep(3)
        receipts = _docs(s, "erasure-receipts")
    assert [k for k, _ in receipts] == [receipt_subject("zed")], "one receipt, after every stage partition answered"
    assert receipts[0][1]["purged"] == {"consent_state": 1, "activity": 1, "caches": 0,
                                        **{st: s.partitions for st in stages}}
    drafts = latest_by_key(s, drafts_topic)
    assert drafts[zed] is None, "no draft left behind (late repeats start none)"
    assert [json.loads(v) for k, v in drafts.items() if v is not None] == [ingest["requested_at"]]  # the done marker
    assert not any(b"zed" in k for k, v in drafts.items() if v is not None)


def test_a_lagging_partition_does_not_make_its_active_users_look_inactive(pipeline_settings):
    """Inactivity runs on the slowest connection-logs partition's event time, not the fastest's.

    Ten days of logins reach every partition but one first; then that partition's users log in
    day after day. Judged against the other partitions' time (day 10), they would look 10 days
    inactive; judged against their own partition's, they never are. A user who really stopped
    logging in (on a fast partition) gets the notice and, a day of grace later, is erased.
    """
    s = pipeline_settings.model_copy(update={"inactivity_days": 2, "inactivity_grace_days": 1})
    day, t0 = 86400, time.time() - 20 * 86400
    by_partition: dict[int, list[str]] = {}
    i = 0
    while len(by_partition) < s.partitions or min(map(len, by_partition.values())) < 2:
        by_partition.setdefault(_partition(f"user{i}", s.partitions), []).append(f"user{i}")
        i += 1
    slow = by_partition[0][:2]  # "daily" users of the lagging partition
    fast = [users[0] for p, users in sorted(by_partition.items()) if p != 0]
    idle = by_partition[1][1]  # on a fast partition, logs in on day 0 only

    def login(prod, user, ts):
        send_json(prod, s.topic("connection-logs"), user, {"user_id": user, "ts": int(ts * 1000),
                                                            "ip": "192.0.2.1", "user_agent": UA, "event": "login"})

    with running_workers(s, count=1):
        prod = producer(s)
        login(prod, idle, t0)
        for d in range(11):
            for user in fast:
                login(prod, user, t0 + d * day)
        prod.flush()
        sent = 1 + 11 * len(fast)
        wait_received(s, {"connection-logs": sent})  # every fast partition is at day 10 now
        for d in range(11):
            for h in range(0, 24, 3):  # the lagging partition catches up, its users logging in every 3 h
                for user in slow:
                    login(prod, user, t0 + d * day + h * 3600)
        prod.flush()
        wait_received(s, {"connection-logs": sent + 11 * 8 * len(slow)})
        receipts = _wait(lambda: _docs(s, "erasure-receipts"), lambda d: len(d) >= 1)
        time.sleep(3)
        notices, receipts = _docs(s, "inactivity-notices"), _docs(s, "erasure-receipts")
    assert sorted(k for k, _ in notices) == [idle]  # on the old worker clock: the lagging users too
    assert [(k, v["reason"]) for k, v in receipts] == [(receipt_subject(idle), "inactivity")]
