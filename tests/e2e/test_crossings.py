"""End to end on the real broker: streamed crossings equal the oracle, record for record, for any
partitioning; a withdrawal tombstones both sides of every pair."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from geo.crossings import CrossingParams, detect_crossings, latest_per_pair
from geo.oracle import brute_force_pairs
from schemas.outputs import crossing_key
from schemas.timefmt import format_ts
from streams.tools.report import check_crossings, current_crossings, read_counters
from tests.e2e.helpers import consume_all, producer, running_workers, send_json, wait_received

pytestmark = pytest.mark.e2e


def city_pings(seed: int, users: int = 60, minutes: int = 20) -> pd.DataFrame:
    """Users wandering between a few hotspots (so crossings happen, many near cell borders)."""
    rng = np.random.default_rng(seed)
    hotspots = np.array([[48.8566, 2.3522], [48.8600, 2.3400], [48.8530, 2.3690], [48.8700, 2.3550]])
    t0 = time.time() - minutes * 60 - 300
    rows = []
    for u in range(users):
        spot = hotspots[rng.integers(len(hotspots))]
        t = t0 + rng.uniform(0, 120)
        while t < t0 + minutes * 60:
            if rng.random() < 0.2:
                spot = hotspots[rng.integers(len(hotspots))]
            lat = spot[0] + rng.normal(0, 0.004)
            lon = spot[1] + rng.normal(0, 0.006)
            rows.append((f"u{u:03d}", t, lat, lon, float(rng.choice([5.0, 20.0, 150.0], p=[.6, .3, .1]))))
            t += rng.uniform(30, 150)
    df = pd.DataFrame(rows, columns=["user_id", "ts", "lat", "lon", "accuracy_m"])
    return df.sort_values("ts").reset_index(drop=True)


def assert_final_records_are_the_batchs(records: list, df: pd.DataFrame) -> None:
    """The latest record under each key of `crossings` is the batch detector's latest record of the pair."""
    latest = latest_per_pair(detect_crossings(df, CrossingParams()))
    want = {}
    for a, b, ts, place, band in latest.itertuples(index=False):
        for user, other in ((a, b), (b, a)):
            want[crossing_key(user, other)] = (format_ts(ts), place, band)
    final = {}
    for r in records:
        v = json.loads(r.value)
        final[r.key] = (v["ts"], v["place"], v["distance_band"])
    assert final == want


def produce_pings(s, prod, df: pd.DataFrame) -> None:
    for row in df.itertuples():
        send_json(prod, s.topic("geo-pings"), row.user_id, {
            "user_id": row.user_id, "ts": int(round(row.ts * 1000)), "lat": row.lat, "lon": row.lon,
            "accuracy_m": row.accuracy_m})
    prod.flush()


def reported_pairs(records: list) -> list[tuple[str, str]]:
    out = []
    for r in records:
        if r.value is None:
            continue  # a tombstone
        rec = json.loads(r.value)
        if rec["type"] == "crossing" and rec["user_id"] < rec["other_user_id"]:
            out.append((rec["user_id"], rec["other_user_id"]))
    return out


@pytest.mark.parametrize("partitions, workers", [(1, 1), (4, 2), (12, 1)])
def test_streamed_pairs_equal_the_oracle(pipeline_settings, partitions, workers):
    s = pipeline_settings.model_copy(update={"partitions": partitions})
    df = city_pings(seed=partitions)
    df["ts"] = (df["ts"] * 1000).round() / 1000  # what goes over the wire: epoch milliseconds
    oracle = brute_force_pairs(df, CrossingParams())
    assert len(oracle) > 30, "the workload must produce crossings"
    with running_workers(s, count=workers):
        prod = producer(s)
        produce_pings(s, prod, df)
        wait_received(s, {"geo-pings": len(df)}, timeout_s=180)
        deadline = time.monotonic() + 90
        while True:
            records = consume_all(s, "crossings")
            pairs = reported_pairs(records)
            if set(pairs) >= oracle or time.monotonic() > deadline:
                break
            time.sleep(2)
        time.sleep(3)
        records = consume_all(s, "crossings")
    pairs = reported_pairs(records)
    assert set(pairs) == oracle
    # Record for record: what a reader of the compacted topic finally sees under each key
    # (participant|other) is the batch detector's latest record of the pair (its latest cooldown
    # period's earliest crossing), whatever the partitions, workers and arrival order; so the three
    # parametrized runs agree with each other too.
    assert_final_records_are_the_batchs(records, df)
    views = [json.loads(r.value) for r in records]
    # One record per participant, placed by that participant; the place is an H3 cell, not a coordinate.
    partitions = {}
    for r, v in zip(records, views):
        assert r.key == crossing_key(v["user_id"], v["other_user_id"])
        assert partitions.setdefault(v["user_id"], r.partition) == r.partition
        assert "lat" not in v and "lon" not in v and len(v["place"]) == 15
    # `crosspaths crossings verify` rebuilds the same pairs from what the worker routed.
    check = check_crossings(s)
    assert check.identical and check.streamed_pairs == check.recomputed_pairs == len(oracle)
    usable = df[~(df["accuracy_m"] > CrossingParams().max_accuracy_m)]  # the others are not routed
    assert check.routed_pings == len(usable[["user_id", "ts", "lat", "lon", "accuracy_m"]].drop_duplicates())


def test_withdrawal_tombstones_and_stops_crossings(pipeline_settings):
    s = pipeline_settings.model_copy(update={"crossing_cooldown_s": 60.0})
    t0 = time.time() - 3600
    spot = (48.8566, 2.3522)

    def together(users, t, n):
        return [{"user_id": u, "ts": int((t + i * 120 + j) * 1000), "lat": spot[0] + j * 1e-4, "lon": spot[1],
                 "accuracy_m": 5.0} for i in range(n) for j, u in enumerate(users)]

    with running_workers(s, count=1):
        prod = producer(s)
        for doc in together(["alice", "bob"], t0, 3):
            send_json(prod, s.topic("geo-pings"), doc["user_id"], doc)
        prod.flush()
        first = _wait_for(s, lambda recs: ("alice", "bob") in reported_pairs(recs))
        assert ("alice", "bob") in reported_pairs(first)

        send_json(prod, s.topic("consents"), "alice",
                  {"user_id": "alice", "updated_at": format_ts(time.time() - 60), "crossings": False})
        prod.flush()
        wait_received(s, {"consents": 1})
        # Later, alice, bob and carol meet again: only bob and carol may cross now.
        later = together(["alice", "bob", "carol"], t0 + 1200, 3)
        for doc in later:
            send_json(prod, s.topic("geo-pings"), doc["user_id"], doc)
        prod.flush()
        records = _wait_for(s, lambda recs: ("bob", "carol") in reported_pairs(recs))

    # Both sides of alice's pair are tombstoned (placed by their participant), after the records.
    tombstones = [r for r in records if r.value is None]
    assert sorted(r.key for r in tombstones) == [crossing_key("alice", "bob"), crossing_key("bob", "alice")]
    docs = [json.loads(r.value) for r in records if r.value is not None]
    alice_bob = [d for d in docs if {d["user_id"], d["other_user_id"]} == {"alice", "bob"}]
    assert alice_bob and all(d["ts"] < format_ts(t0 + 1200) for d in alice_bob), "no crossing with alice after she withdrew"
    shown = current_crossings([(r.key, None if r.value is None else json.loads(r.value)) for r in records])
    assert set(shown) == {"bob", "carol"} and set(shown["bob"]) == {"carol"} and set(shown["carol"]) == {"bob"}


def _wait_for(s, predicate, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while True:
        records = consume_all(s, "crossings")
        if predicate(records) or time.monotonic() > deadline:
            return records
        time.sleep(1)


def test_worker_survives_garbage_on_every_topic(pipeline_settings):
    """Junk on the internal topics is quarantined in dead-letters; the pipeline keeps working."""
    s = pipeline_settings
    internal = ["crossing-cells", "crossing-pairs", "stats-cells", "stats-connections", "erasure-reports"]
    t0 = time.time() - 600
    with running_workers(s, count=1):
        prod = producer(s)
        for name in internal:
            prod.send(s.topic(name), key=b"junk", value=b'{"not": "what this stage expects"')
            prod.send(s.topic(name), key=b"junk", value=b'[["key", {"u": 1}]]')
            prod.send(s.topic(name), key=b"progress", value=b'{"src": "nowhere", "progress": "soon"}')
        for name in ("geo-pings", "connection-logs", "consents"):
            prod.send(s.topic(name), key=b"x", value=b"\x00\x01 not json")
        prod.flush()
        # Valid but 25 years old, next to the pings below (nothing is late before every source has
        # sent something): it once made the detector's eviction index one entry per 30 s in between.
        send_json(prod, s.topic("geo-pings"), "old", {"user_id": "old", "ts": 978_307_200_000,
                                                      "lat": 48.85, "lon": 2.35, "accuracy_m": 5})
        for j, u in enumerate(["ann", "ben"]):
            send_json(prod, s.topic("geo-pings"), u, {"user_id": u, "ts": int((t0 + j) * 1000),
                                                      "lat": 48.85 + j * 1e-4, "lon": 2.35, "accuracy_m": 5})
        prod.flush()
        records = _wait_for(s, lambda recs: ("ann", "ben") in reported_pairs(recs))
        assert ("ann", "ben") in reported_pairs(records), "the pipeline stopped after junk input"
        letters = [json.loads(r.value) for r in consume_all(s, "dead-letters", min_count=3 * len(internal) + 3)]
    quarantined = [d for d in letters if d["reason"] == "processing_error"]
    assert sorted({d["source_topic"] for d in quarantined}) == sorted(s.topic(n) for n in internal)
    assert len(quarantined) == 3 * len(internal)
    assert {d["reason"] for d in letters if d not in quarantined} == {"not_json"}


def test_consents_sent_before_pings_apply_to_them_in_a_backlog(pipeline_settings):
    """A worker that starts on a backlog applies each consent before the pings sent after it.

    Pings are far more numerous and go through faster paths than consents; without consents first,
    the pings of users who had opted out would be judged by the default consent and used.
    """
    from streams.topics import create_topics

    s = pipeline_settings
    create_topics(s)
    prod = producer(s)
    t0 = time.time() - 1800
    users = [f"user-{i:03d}" for i in range(40)]
    off = {u: ("geolocation" if i % 4 == 0 else "crossings") for i, u in enumerate(users) if i % 2 == 0}
    for u in users:  # every user's consent first: half of them opted out of geolocation or crossings
        doc = {"user_id": u, "updated_at": format_ts(t0 - 60)}
        if u in off:
            doc[off[u]] = False
        send_json(prod, s.topic("consents"), u, doc)
    prod.flush()
    spot = (48.8566, 2.3522)
    pings = [{"user_id": u, "ts": int((t0 + k * 60) * 1000), "lat": spot[0] + j * 2e-5, "lon": spot[1],
              "accuracy_m": 5.0} for k in range(10) for j, u in enumerate(users)]
    for doc in pings:
        send_json(prod, s.topic("geo-pings"), doc["user_id"], doc)
    prod.flush()

    with running_workers(s, count=1):
        wait_received(s, {"consents": len(users), "geo-pings": len(pings)})
        expected_pairs = {(a, b) for a in users for b in users if a < b and a not in off and b not in off}
        records = _wait_for(s, lambda recs: expected_pairs <= set(reported_pairs(recs)))
        counters = read_counters(s)

    assert set(reported_pairs(records)) == expected_pairs, "only users without an opt-out cross"
    assert all({d["user_id"], d.get("other_user_id")}.isdisjoint(off) for d in map(json.loads, (r.value for r in records))
               if d["type"] == "crossing")
    no_geolocation = sum(1 for u in off if off[u] == "geolocation")
    assert counters.topics["geo-pings"].dropped_consent == 10 * no_geolocation


def test_every_detector_partition_hears_every_input_partition(pipeline_settings):
    """Pings of users on every input partition, all at one spot (so they reach one or two of the
    detector's partitions): the worker's /state/ shows every detector partition knowing every input
    partition's progress (progress markers), so every watermark exists and evicts old pings."""
    import urllib.request

    from kafka.partitioner.default import murmur2

    s = pipeline_settings
    now = time.time()
    users = [f"u{i:03d}" for i in range(40)]
    assert {(murmur2(u.encode()) & 0x7FFFFFFF) % s.partitions for u in users} == set(range(s.partitions))
    with running_workers(s, count=1) as workers:
        port = workers[0].args[-1]
        prod = producer(s)
        for i, u in enumerate(users):
            send_json(prod, s.topic("geo-pings"), u, {"user_id": u, "ts": int((now - 600 + i) * 1000),
                                                      "lat": 48.8566, "lon": 2.3522, "accuracy_m": 5})
        prod.flush()
        wait_received(s, {"geo-pings": len(users)})
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/state/", timeout=5) as r:
                cells = json.loads(r.read()).get("crossing-cells", {})
            heard = {p: [v for v in c["input_progress"].values() if v is not None] for p, c in cells.items()}
            if (len(cells) == s.partitions and all(len(v) == s.partitions for v in heard.values())) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert sorted(cells) == [str(p) for p in range(s.partitions)]
    for p, c in cells.items():
        assert all(v is not None for v in c["input_progress"].values()), (p, c)
        assert c["watermark"] is not None and c["slowest_input"] is not None
    routed_to = [p for p, c in cells.items() if c["live_pings"]]
    assert 0 < len(routed_to) < s.partitions, "the pings must leave some detector partitions without a ping"
