"""End to end on the real broker: k-anonymized partner and connection statistics."""
from __future__ import annotations

import json
import time

import h3
import numpy as np
import pytest

from anonymizers.connection import group_key, reduce_connection
from anonymizers.differencing import PublishedArea, find_isolations
from anonymizers.kanon import KAnonParams, publish_groups
from anonymizers.regions import publish_regions
from anonymizers.windows import window_start
from schemas.timefmt import format_ts
from tests.e2e.helpers import consume_all, producer, running_workers, send_json, wait_received

pytestmark = pytest.mark.e2e

UAS = ["Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
       "Version/17.5 Mobile/15E148 Safari/604.1",
       "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
       "Chrome/126.0.6478.122 Mobile Safari/537.36",
       "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"]


def test_partner_and_connection_statistics(pipeline_settings):
    s = pipeline_settings
    rng = np.random.default_rng(3)
    now = time.time()
    # A window that the closing events below (at w0 + 2 h + 400 s) complete. Those must not be in the
    # future (skew limit 300 s): in the first minutes of an hour, window_start(now) - 2 h would put them there.
    w0 = window_start(now - 1000, 3600) - 2 * 3600
    spots = [(48.8566, 2.3522), (48.8606, 2.3376), (48.8530, 2.3690)]
    consents, pings, logs = [], [], []
    opted = {f"p{i:03d}" for i in range(70)}
    expired = {f"x{i:03d}" for i in range(15)}   # opted in 14 months ago: no longer valid
    never = {f"n{i:03d}" for i in range(15)}     # never opted in
    for u in sorted(opted):
        consents.append({"user_id": u, "updated_at": format_ts(now - 86400), "partner_sharing": True})
    for u in sorted(expired):
        consents.append({"user_id": u, "updated_at": format_ts(now - 430 * 86400), "partner_sharing": True})
    for u in sorted(opted | expired | never):
        spot = spots[rng.integers(len(spots))] if not u.startswith("n") else (48.8800, 2.2900)
        for _ in range(4):
            lat, lon = spot[0] + rng.normal(0, 0.002), spot[1] + rng.normal(0, 0.003)
            pings.append({"user_id": u, "ts": int((w0 + rng.uniform(0, 3600)) * 1000), "lat": lat, "lon": lon})
        ip = f"203.0.{rng.integers(0, 255)}.{rng.integers(1, 255)}" if rng.random() < .7 else "2001:db8:5:6::9"
        logs.append({"user_id": u, "ts": int((w0 + rng.uniform(0, 3600)) * 1000), "ip": ip,
                     "user_agent": UAS[rng.integers(len(UAS))], "language": "fr-FR,fr;q=0.9", "isp": "Orange",
                     "event": "login"})
    pings.sort(key=lambda d: d["ts"])
    # Closing events, past the window end + lateness, from every user (so from every input partition:
    # a window closes once all upstream partitions have moved past it).
    later = int((w0 + 2 * 3600 + 400) * 1000)
    closers = [{"user_id": u, "ts": later, "lat": spots[0][0], "lon": spots[0][1]} for u in sorted(opted)]
    log_closers = [dict(d, ts=later) for d in logs]

    with running_workers(s, count=1):
        prod = producer(s)
        for c in consents:
            send_json(prod, s.topic("consents"), c["user_id"], c)
        prod.flush()
        wait_received(s, {"consents": len(consents)})
        for d in pings + closers:
            send_json(prod, s.topic("geo-pings"), d["user_id"], d)
        for d in logs + log_closers:
            send_json(prod, s.topic("connection-logs"), d["user_id"], d)
        prod.flush()
        wait_received(s, {"geo-pings": len(pings) + len(closers), "connection-logs": 2 * len(logs)})
        loc = _wait_nonempty(s, "partner-statistics")
        conn = _wait_nonempty(s, "connection-statistics")
        time.sleep(2)
        loc = [json.loads(r.value) for r in consume_all(s, "partner-statistics")]
        conn = [json.loads(r.value) for r in consume_all(s, "connection-statistics")]

    # Expected, computed by the core on exactly the users with a valid opt-in.
    params = KAnonParams(k=s.k, base_resolution=s.h3_base_resolution, coarsest_resolution=s.h3_coarsest_resolution)
    users_by_cell: dict[str, set] = {}
    for d in pings:
        if d["user_id"] in opted:
            users_by_cell.setdefault(h3.latlng_to_cell(d["lat"], d["lon"], params.base_resolution), set()).add(d["user_id"])
    expected = {(r.region, r.cell, r.resolution, r.members, r.users) for r in publish_regions(users_by_cell, params)}
    assert expected, "the workload must publish something"
    assert {(r["region"], r["cell"], r["resolution"], tuple(r["members"]), r["users"]) for r in loc} == expected
    assert any(len(r["members"]) > 1 for r in loc), "the workload must publish a remainder region"
    # Independent of the rule: counts >= k and exact, regions disjoint, inside their cell.
    owner: dict[str, str] = {}
    for r in loc:
        assert r["users"] >= s.k and r["k"] == s.k
        assert r["window_start"] == format_ts(w0) and r["window_end"] == format_ts(w0 + 3600)
        assert (r["region"] == r["cell"]) == (r["members"] == [r["cell"]])
        places = set()
        for m in r["members"]:
            assert h3.cell_to_parent(m, r["resolution"]) == r["cell"], f"{m} outside {r['cell']}"
            places |= {m} if h3.get_resolution(m) == params.base_resolution else set(
                h3.cell_to_children(m, params.base_resolution))
        for c in places:
            assert c not in owner, f"{c} is in {owner[c]} and {r['region']}"
            owner[c] = r["region"]
        assert r["users"] == len(set().union(*(users_by_cell.get(c, set()) for c in places)))
    # No sum or difference of published counts isolates fewer than k users (the partner's view).
    published = [PublishedArea(r["region"], tuple(r["members"]), r["users"]) for r in loc]
    assert find_isolations(published, users_by_cell, s.k) == []

    groups: dict[tuple, set] = {}
    for d in logs:
        reduced = reduce_connection(ts=d["ts"] / 1000, ip=d["ip"], user_agent=d["user_agent"], event=d["event"],
                                    isp=d["isp"], language=d["language"])
        groups.setdefault(group_key(reduced, tuple(s.connection_group_by.split(","))), set()).add(d["user_id"])
    expected_groups = {(tuple(g.group), g.users) for g in publish_groups(groups, s.k)}
    assert {(tuple(r["group"]), r["users"]) for r in conn} == expected_groups
    assert all(r["users"] >= s.k for r in conn)

    # No identifier of any kind in any statistics record.
    raw = json.dumps(loc + conn)
    for u in opted | expired | never:
        assert u not in raw
    for d in logs:
        assert d["ip"] not in raw
    for d in pings:
        assert f"{d['lat']}" not in raw and f"{d['lon']}" not in raw


def _wait_nonempty(s, name, timeout_s=90):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = consume_all(s, name)
        if records:
            return records
        time.sleep(1)
    raise AssertionError(f"nothing published on {name} within {timeout_s} s")


def test_a_window_closes_when_later_input_goes_elsewhere(pipeline_settings):
    """Every input partition moves past a window, but nothing it sends later reaches the stats-cells
    partition holding the window (later pings come from users without a partner opt-in): progress
    markers close the window anyway, instead of leaving it open until opted-in users ping again."""
    s = pipeline_settings
    rng = np.random.default_rng(5)
    now = time.time()
    w0 = window_start(now - 1000, 3600) - 2 * 3600
    opted = [f"p{i:03d}" for i in range(2 * s.k)]
    pings = [{"user_id": u, "ts": int((w0 + rng.uniform(0, 3600)) * 1000),
              "lat": 48.8566 + rng.normal(0, 0.001), "lon": 2.3522 + rng.normal(0, 0.001)} for u in opted]
    later = int((w0 + 2 * 3600 + 400) * 1000)
    # Many users, so every input partition has some; no opt-in, so none of this goes to statistics.
    closers = [{"user_id": f"q{i:03d}", "ts": later, "lat": 48.8566, "lon": 2.3522} for i in range(40)]
    with running_workers(s, count=1):
        _send_opted_in(s, opted, sorted(pings, key=lambda d: d["ts"]) + closers, now)
        loc = [json.loads(r.value) for r in _wait_nonempty(s, "partner-statistics", timeout_s=60)]
    assert loc, "the window was never published: an input partition that sent nothing there held it open"
    # Every user counted: the whole window, as the core publishes it (users left below k around a
    # lone cell of >= k are suppressed, so the sum can be below len(opted)).
    by_cell: dict[str, set] = {}
    for d in pings:
        by_cell.setdefault(h3.latlng_to_cell(d["lat"], d["lon"], s.h3_base_resolution), set()).add(d["user_id"])
    params = KAnonParams(k=s.k, base_resolution=s.h3_base_resolution, coarsest_resolution=s.h3_coarsest_resolution)
    assert {(r["region"], r["users"]) for r in loc} == {(r.region, r.users) for r in publish_regions(by_cell, params)}
    assert {r["window_start"] for r in loc} == {format_ts(w0)}


def test_dp_partner_statistics_noisy_thresholded_and_bounded(pipeline_settings):
    """CROSSPATHS_DP_EPSILON=1, one cell per user: counts are noisy, a cell needs the (epsilon, delta)
    threshold (15 here, above k = 10), a lone user's cell is not published, and a user seen in three
    cells, each counted by another statistics partition, is counted in one over all of them (the ingest
    stage's bound, streams.stages.contribution)."""
    from anonymizers.dp import DPParams, publication_threshold
    from streams.rules import stats_partition

    s = pipeline_settings.model_copy(update={"dp_epsilon": 1.0, "dp_max_cells_per_user": 1, "dp_resolution": 9})
    tau = publication_threshold(DPParams(epsilon=1.0, max_cells_per_user=1, delta=s.dp_delta))
    assert tau == 15 > s.k and s.partitions == 4
    rng = np.random.default_rng(9)
    now = time.time()
    w0 = window_start(now - 1000, 3600) - 2 * 3600
    spots = [(48.830 + 0.004 * (i // 6), 2.300 + 0.006 * (i % 6)) for i in range(24)]  # ~450 m apart
    cell = lambda p: h3.latlng_to_cell(*p, s.h3_base_resolution)  # noqa: E731
    assert len({cell(p) for p in spots}) == 24
    dense, mid, lone = spots[:10], spots[10:20], spots[23]
    # Three places ~10-20 km apart, each in another statistics partition.
    roam, seen = [], set()
    for lat, lon in ((48.70 + 0.05 * i, 2.10 + 0.08 * j) for i in range(8) for j in range(8)):
        part = stats_partition(cell((lat, lon)), s)
        if part not in seen and len(roam) < 3:
            roam.append((lat, lon)), seen.add(part)
    assert len(roam) == 3
    people: dict[str, list] = {}
    for j, p in enumerate(dense):  # 20 users each: published (noisy count >= 15 but for ~0.2 %)
        people.update({f"d{j}-{i}": [p] for i in range(20)})
    for j, p in enumerate(mid):  # 11 users each: >= k, but below the threshold (1.3 % published each)
        people.update({f"m{j}-{i}": [p] for i in range(11)})
    people.update({f"r{i:03d}": roam for i in range(60)})  # each in three cells, counted in one
    people["alone"] = [lone]
    pings = sorted(({"user_id": u, "ts": int((w0 + rng.uniform(0, 3600)) * 1000), "lat": p[0], "lon": p[1]}
                    for u, places in people.items() for p in places), key=lambda d: d["ts"])
    later = int((w0 + 2 * 3600 + 400) * 1000)
    closers = [{"user_id": u, "ts": later, "lat": 48.9, "lon": 2.25} for u in people]
    with running_workers(s, count=1):
        _send_opted_in(s, people, pings + closers, now)
        _wait_nonempty(s, "partner-statistics")
        time.sleep(3)
        loc = [json.loads(r.value) for r in consume_all(s, "partner-statistics")]
    by_cell = {r["cell"]: r for r in loc}
    for r in loc:
        assert r["noisy"] is True and r["users"] >= tau and r["k"] == s.k
        assert r["resolution"] == s.h3_base_resolution and r["members"] == [r["cell"]] and r["region"] == r["cell"]
        assert r["window_start"] == format_ts(w0)
    assert cell(lone) not in by_cell, "a lone user's cell was published"
    dense_rows = [by_cell[cell(p)] for p in dense if cell(p) in by_cell]
    assert len(dense_rows) >= 8
    assert all(abs(r["users"] - 20) <= 10 for r in dense_rows)
    assert any(r["users"] != 20 for r in dense_rows), "no noise on the counts"
    # With k alone, ~7 of the 10 cells of 11 users would show; with the threshold, ~0.13.
    assert sum(cell(p) in by_cell for p in mid) <= 2
    # Each roamer counted in one cell of three, their first: ~60 in all, not 180 as when each statistics
    # partition bounded a user on its own (a cell below 15 after noise is not shown).
    assert sum(by_cell[cell(p)]["users"] for p in roam if cell(p) in by_cell) <= 60 + 15
    raw = json.dumps(loc)
    assert not any(u in raw for u in people)


def test_dp_over_a_declared_area_counts_every_area_cell_in_every_window(pipeline_settings):
    """CROSSPATHS_DP_DOMAIN: a file of H3 cells (one resolution-6 cell: its 49 resolution-8 cells). Only area
    cells are published, with noisy counts from k; empty area cells get noise too, and so do windows in
    which no one was there; each user counts in one cell (m = 1); a crowd outside the area never shows.
    The worker states the guarantee when it starts."""
    from anonymizers.servicearea import ServiceArea

    area_cell = h3.latlng_to_cell(48.8566, 2.3522, 6)
    area_file = pipeline_settings.home / "area.txt"
    area_file.write_text(f"# the service area\n{area_cell}\n")
    # k = 2 and epsilon = 0.5: an empty cell shows with P(Z >= 2) = a**2 / (1 + a) = 0.23 (a = exp(-0.5)),
    # so each window of the 49-cell area shows some (P(none) < 1e-5); noise std ~2.8.
    s = pipeline_settings.model_copy(update={"dp_epsilon": 0.5, "dp_max_cells_per_user": 1, "dp_resolution": 8,
                                             "dp_domain": area_file, "k": 2})
    area = ServiceArea.from_file(area_file, 8).cells
    assert len(area) == 49
    rng = np.random.default_rng(21)
    now = time.time()
    w0 = window_start(now - 1000, 3600) - 3 * 3600  # windows w0 (data), w0 + 1 h and w0 + 2 h (no one)
    centre = lambda c: h3.cell_to_latlng(c)  # noqa: E731
    cells = sorted(area)
    dense, roam = cells[:5], cells[5:8]
    outside = h3.latlng_to_cell(48.80, 2.45, 8)
    assert outside not in area
    people: dict[str, list] = {}
    for j, c in enumerate(dense):
        people.update({f"d{j}-{i}": [c] for i in range(25)})
    people.update({f"r{i:03d}": roam for i in range(60)})  # each in three area cells: counted in one
    people.update({f"o{i:03d}": [outside] for i in range(40)})  # a crowd outside the area
    pings = sorted(({"user_id": u, "ts": int((w0 + rng.uniform(0, 3600)) * 1000), "lat": centre(c)[0],
                     "lon": centre(c)[1]} for u, places in people.items() for c in places), key=lambda d: d["ts"])
    later = int((w0 + 3 * 3600 + 400) * 1000)
    closers = [{"user_id": u, "ts": later, "lat": 48.9, "lon": 2.25} for u in people]
    with running_workers(s, count=1):
        _send_opted_in(s, people, pings + closers, now)
        deadline = time.monotonic() + 60
        while True:  # the three windows, each published once its partition's watermark passes it
            loc = [json.loads(r.value) for r in consume_all(s, "partner-statistics")]
            if {r["window_start"] for r in loc} >= {format_ts(w0 + i * 3600) for i in range(3)}:
                break
            assert time.monotonic() < deadline, f"windows published: {sorted({r['window_start'] for r in loc})}"
            time.sleep(1)
        time.sleep(2)
        loc = [json.loads(r.value) for r in consume_all(s, "partner-statistics")]
    log = (s.home / "worker-0.log").read_text(errors="replace")
    assert "every cell of the declared area (49 cells" in log and "epsilon=0.5 (pure) per window" in log
    assert "epsilon=12 (pure) per day" in log

    for r in loc:
        assert r["noisy"] is True and r["cell"] in area and r["users"] >= s.k and r["k"] == s.k
        assert r["resolution"] == 8 and r["members"] == [r["cell"]] and r["region"] == r["cell"]
    assert len({(r["window_start"], r["cell"]) for r in loc}) == len(loc), "a cell published twice in a window"
    by_window: dict[str, dict] = {}
    for r in loc:
        by_window.setdefault(r["window_start"], {})[r["cell"]] = r["users"]
    # Every window from the first one a partition could close: w0 and the two empty ones after it, and
    # possibly the (empty) one before w0, complete when the first progress marker arrived.
    assert set(by_window) - {format_ts(w0 - 3600)} == {format_ts(w0 + i * 3600) for i in range(3)}
    first = by_window[format_ts(w0)]
    assert outside not in first
    assert all(c in first and abs(first[c] - 25) <= 20 for c in dense)
    assert any(first[c] != 25 for c in dense), "no noise on the counts"
    assert all(c in first for c in roam)
    assert abs(sum(first[c] for c in roam) - 60) <= 30, "each roamer must count in one cell, not three"
    assert set(first) - set(dense) - set(roam), "no empty area cell got a noisy count that showed"
    raw = json.dumps(loc)
    assert not any(u in raw for u in people)


def _send_opted_in(s, people, pings: list[dict], now: float) -> None:
    """Every person opted in to partner sharing (a day ago), then their pings; waits until all are counted."""
    prod = producer(s)
    for u in people:
        send_json(prod, s.topic("consents"), u, {"user_id": u, "updated_at": format_ts(now - 86400),
                                                 "partner_sharing": True})
    prod.flush()
    wait_received(s, {"consents": len(people)})
    for d in pings:
        send_json(prod, s.topic("geo-pings"), d["user_id"], d)
    prod.flush()
    wait_received(s, {"geo-pings": len(pings)})
