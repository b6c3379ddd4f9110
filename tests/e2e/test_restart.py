"""End to end on the real broker: statistics windows and crossing state survive a worker restart."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import h3
import numpy as np
import pytest

from anonymizers.kanon import KAnonParams
from anonymizers.regions import publish_regions
from anonymizers.windows import window_start
from geo.crossings import CrossingParams
from geo.oracle import brute_force_pairs
from schemas.timefmt import format_ts
from streams.tools.demo import start_worker, stop_worker
from streams.tools.kafkaio import latest_by_key
from streams.tools.report import check_crossings
from streams.topics import create_topics
from tests.e2e.helpers import consume_all, free_port, producer, send_json, wait_group_stable, wait_received
from tests.e2e.test_crossings import assert_final_records_are_the_batchs, city_pings, produce_pings, reported_pairs

pytestmark = pytest.mark.e2e


def test_window_state_is_restored_and_published_once(pipeline_settings):
    s = pipeline_settings
    rng = np.random.default_rng(11)
    now = time.time()
    w0 = window_start(now - 1000, 3600) - 2 * 3600  # closers at w0 + 2 h + 400 s stay in the past
    users = [f"r{i:03d}" for i in range(40)]
    pings = [{"user_id": u, "ts": int((w0 + rng.uniform(0, 3600)) * 1000),
              "lat": 48.8566 + rng.normal(0, 0.001), "lon": 2.3522 + rng.normal(0, 0.0015)}
             for u in users for _ in range(3)]
    pings.sort(key=lambda d: d["ts"])
    closers = [{"user_id": u, "ts": int((w0 + 2 * 3600 + 400) * 1000), "lat": 48.8566, "lon": 2.3522}
               for u in users]
    create_topics(s)
    log = s.home / "worker.log"

    def run_worker():
        proc = start_worker(s, free_port(), log)
        wait_group_stable(s, members=1)
        return proc

    prod = producer(s)
    for u in users:
        send_json(prod, s.topic("consents"), u, {"user_id": u, "updated_at": format_ts(now - 3600),
                                                 "partner_sharing": True})
    prod.flush()
    worker = run_worker()
    try:
        wait_received(s, {"consents": len(users)})
        for d in pings:  # the window fills up...
            send_json(prod, s.topic("geo-pings"), d["user_id"], d)
        prod.flush()
        wait_received(s, {"geo-pings": len(pings)})
        time.sleep(3)  # let the table changelogs flush
    finally:
        stop_worker(worker)  # ...and the worker goes away before the window closes
    assert consume_all(s, "partner-statistics") == []

    worker = run_worker()  # a new process: state comes back from the changelogs
    try:
        for d in closers:
            send_json(prod, s.topic("geo-pings"), d["user_id"], d)
        prod.flush()
        wait_received(s, {"geo-pings": len(pings) + len(closers)})
        rows = _wait_rows(s)
    finally:
        stop_worker(worker)
    worker = run_worker()  # and once more: the published window must not come out again
    try:
        time.sleep(5)
        extra = {"user_id": users[0], "ts": int((w0 + 2 * 3600 + 500) * 1000), "lat": 48.8566, "lon": 2.3522}
        send_json(prod, s.topic("geo-pings"), users[0], extra)
        prod.flush()
        wait_received(s, {"geo-pings": len(pings) + len(closers) + 1})
        time.sleep(3)
        again = [json.loads(r.value) for r in consume_all(s, "partner-statistics")]
    finally:
        stop_worker(worker)

    params = KAnonParams(k=s.k, base_resolution=s.h3_base_resolution, coarsest_resolution=s.h3_coarsest_resolution)
    by_cell: dict[str, set] = {}
    for d in pings:
        by_cell.setdefault(h3.latlng_to_cell(d["lat"], d["lon"], params.base_resolution), set()).add(d["user_id"])
    expected = {(r.region, r.users) for r in publish_regions(by_cell, params)}
    assert expected
    assert {(r["region"], r["users"]) for r in rows} == expected, "state lost or doubled across the restart"
    assert len(again) == len(rows), "a published window came out again after a restart"


def _wait_rows(s, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [json.loads(r.value) for r in consume_all(s, "partner-statistics")]
        if rows:
            time.sleep(2)
            return [json.loads(r.value) for r in consume_all(s, "partner-statistics")]
        time.sleep(1)
    raise AssertionError("no partner statistics after the restart")


@pytest.mark.parametrize("change", ["restart", "crash", "second worker joins"])
def test_crossings_spanning_a_worker_restart_are_found(pipeline_settings, change):
    """Pings before a restart, a crash (SIGKILL) or a rebalance onto a new worker still meet pings
    after it: each detector partition that starts, or moves, is rebuilt from its resume point
    (crossing-cells replayed), so the pairs equal the oracle's. After a crash the new worker takes
    over once the group drops the dead member (its session timeout), with input waiting: each
    input message is still counted once (wait_received is exact)."""
    s = pipeline_settings
    df = city_pings(seed=5)
    df["ts"] = (df["ts"] * 1000).round() / 1000
    params = CrossingParams()
    cut = df["ts"].quantile(0.5)
    before, after = df[df["ts"] < cut], df[df["ts"] >= cut]
    oracle = brute_force_pairs(df, params)
    spanning = oracle - brute_force_pairs(before, params) - brute_force_pairs(after, params)
    assert len(spanning) >= 5, "the workload must have pairs that meet only across the restart"
    create_topics(s)
    prod = producer(s)
    workers: list = []  # (process, web port, log)

    def add_worker():
        port = free_port()
        log = s.home / f"worker-{len(workers)}.log"
        workers.append((start_worker(s, port, log), port, log))
        wait_group_stable(s, members=sum(proc.poll() is None for proc, _, _ in workers))

    try:
        add_worker()
        produce_pings(s, prod, before)
        wait_received(s, {"geo-pings": len(before)})
        _wait_pairs(s, brute_force_pairs(before, params))
        time.sleep(3)  # offsets committed, resume points in their changelog
        if change == "restart":
            stop_worker(workers[0][0])
        elif change == "crash":  # no goodbye: uncommitted input is handled again by the next worker
            os.killpg(workers[0][0].pid, signal.SIGKILL)
            workers[0][0].wait()
        add_worker()
        produce_pings(s, prod, after)
        wait_received(s, {"geo-pings": len(df)})
        pairs = _wait_pairs(s, oracle)
        states = [json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/state/", timeout=5).read())
                  for proc, port, _ in workers if proc.poll() is None]
    except BaseException:
        for _, _, log in workers:
            print(f"---- {log} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        raise
    finally:
        for proc, _, _ in workers:
            stop_worker(proc)
    assert spanning <= set(pairs), f"missed across the {change}: {sorted(spanning - set(pairs))}"
    assert set(pairs) == oracle
    # Record for record, as a fault-free run: the final record under each key is the batch's.
    assert_final_records_are_the_batchs(consume_all(s, "crossings"), df)
    newest = states[-1]["crossing-cells"]  # the new worker's detector partitions were all rebuilt
    assert newest and all(v["rebuilt"] is not None for v in newest.values()), newest
    assert sum(v["rebuilt"]["records"] for v in newest.values()) > 0
    check = check_crossings(s)
    assert check.identical and check.streamed_pairs == len(oracle)
    if change != "second worker joins":  # one worker holds every table partition: its tables = their changelogs
        assert states[0]["table_keys"] == _changelog_keys(s, states[0]["table_keys"])


def _changelog_keys(s, tables) -> dict[str, int]:
    """Keys with a value (not a tombstone) in each table's changelog."""
    return {name: sum(v is not None for v in latest_by_key(s, f"{s.app_id}-{name}-changelog").values())
            for name in tables}


def _wait_pairs(s, expected: set, timeout_s: float = 90) -> list:
    """Reported pairs, once they include `expected` (or the timeout passed), after 3 s more."""
    deadline = time.monotonic() + timeout_s
    while not set(reported_pairs(consume_all(s, "crossings"))) >= expected and time.monotonic() < deadline:
        time.sleep(2)
    time.sleep(3)
    return reported_pairs(consume_all(s, "crossings"))
