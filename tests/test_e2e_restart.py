"""End to end on the real broker: statistics windows survive a worker restart and publish once."""
from __future__ import annotations

import json
import time

import h3
import numpy as np
import pytest

from anonymizers.kanon import KAnonParams, generalize_cells
from anonymizers.windows import window_start
from schemas.timefmt import format_ts
from streams.demo import start_worker, stop_worker
from streams.topics import create_topics
from tests.e2e_helpers import consume_all, free_port, producer, send_json, wait_group_stable, wait_received

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
    expected = {(r.cell, r.users) for r in generalize_cells(by_cell, params)}
    assert expected
    assert {(r["cell"], r["users"]) for r in rows} == expected, "state lost or doubled across the restart"
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
