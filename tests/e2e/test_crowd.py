"""End to end on the real broker: a crowd through two workers. The final record per key of
`crossings` is the batch's under the crowd rule, crossings sent before a unit became a crowd are
withdrawn (tombstoned), no crowd member is told about other crowd members, and worker memory stays
under a bound while the crowd goes through."""
from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geo.crossings import Fix, detect_crossings, latest_per_pair, route
from schemas.outputs import crossing_key
from schemas.timefmt import format_ts
from streams.tools.report import check_crossings
from tests.e2e.helpers import consume_all, producer, running_workers, send_json, wait_received
from tests.e2e.test_crossings import city_pings

pytestmark = pytest.mark.e2e

CROWD_USERS = 40  # the setting under test: more distinct people than this at a key within 300 s is a crowd
MEMORY_BOUND_KB = 1_000_000  # the bound for a worker going through a crowd


def crowd_pings(t0: float, people: int, minutes: int, center: tuple[float, float], seed: int,
                arrive_s: float = 0.0) -> pd.DataFrame:
    """`people` users within ~150 m of `center`, one ping every 30 s each, person u from t0 + u * arrive_s."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(people):
        phase = u * arrive_s + rng.uniform(0, 30)
        for k in range(minutes * 2):
            r, a = 150 * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            lat = center[0] + r * np.cos(a) / 111_195
            lon = center[1] + r * np.sin(a) / (111_195 * np.cos(np.radians(center[0])))
            rows.append((f"fan{u:03d}", t0 + phase + 30 * k, lat, lon, 5.0))
    return pd.DataFrame(rows, columns=["user_id", "ts", "lat", "lon", "accuracy_m"])


def key_center(key: str, params) -> tuple[float, float]:
    """The center of a partition key's cell (routing: latitude bands, per-band longitude cells)."""
    from geo.crossings.routing import _route_band_geometry, _route_n_lon

    band, cell = (int(x) for x in key.split(":"))
    h, _ = _route_band_geometry(params)
    n = _route_n_lon(band, h, params)
    return -90.0 + (band + 0.5) * h, -180.0 + (cell + 0.5) * 360.0 / n


def _wait_for_fan_pairs(s, fans: set[str], timeout_s: float = 90) -> int:
    """Wait until some crossing between two crowd members is on `crossings`; how many records there are."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sum(r.value is not None and r.key.split(b"|", 1)[0].decode() in fans
                    and r.key.split(b"|", 1)[1].decode() in fans for r in consume_all(s, "crossings"))
        if found:
            return found
        time.sleep(1)
    return 0


def _rss_sampler(pids: list[int], peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))
            except OSError:
                pass
        stop.wait(0.2)


def test_a_crowd_through_two_workers_gives_the_batchs_records(pipeline_settings):
    s = pipeline_settings.model_copy(update={"partitions": 4, "crossing_crowd_users": CROWD_USERS})
    params = s.crossing_params()
    city = city_pings(seed=15, users=60, minutes=12)
    t0 = float(city["ts"].min())
    # One crowd in the middle of a partition key (every member home there: every pair judged there),
    # one across the border of two keys (pairs judged at either key, some units crowds, some not).
    lat0, lon0 = 48.8566, 2.3522
    middle = key_center(route(Fix("x", 0, lat0, lon0), params)[0][0], params)
    # The crowd gathers over 100 s, so that its first people cross before it is a crowd.
    crowd = crowd_pings(t0 + 60, people=200, minutes=10, center=middle, seed=1, arrive_s=0.5)
    border = crowd_pings(t0 + 90, people=60, minutes=10, center=(lat0 + 0.02, lon0 - 0.03), seed=2)
    border["user_id"] = border["user_id"].str.replace("fan", "edge")
    df = pd.concat([city, crowd, border]).sort_values("ts", kind="stable").reset_index(drop=True)
    df["ts"] -= 1200  # room before now for the watermark markers below
    # The crowd's first ping 20 s into a crowd slice (slices are aligned on the epoch, so a run at
    # another clock time would otherwise cut the crowd elsewhere): its first people, sent first,
    # are then in a slice the rest of the crowd fills, and their crossings must be withdrawn.
    fans = set(crowd["user_id"])
    first = float(df.loc[df["user_id"].isin(fans), "ts"].min())
    df["ts"] -= (first % params.window_s) - 20.0
    first = float(df.loc[df["user_id"].isin(fans), "ts"].min())
    # The end of the input: one ping per input partition, far away, late enough for every detector's
    # watermark to pass the last slice (crossings held back where a crowd just was are then sent).
    end = float(df["ts"].max()) + 2 * params.window_s + params.lateness_s + 60
    markers = pd.DataFrame([(f"end-marker-{p}", end, 0.5 * p, 0.5, 5.0) for p in range(s.partitions)],
                           columns=df.columns)
    df = pd.concat([df, markers]).reset_index(drop=True)
    df["ts"] = (df["ts"] * 1000).round() / 1000  # what goes over the wire: epoch milliseconds

    latest = latest_per_pair(detect_crossings(df, params))
    without_rule = latest_per_pair(detect_crossings(df, s.crossing_params(crowd_users=0)))
    assert sum(a in fans and b in fans for a, b in zip(without_rule.user_a, without_rule.user_b)) > 15_000
    fan_partners = collections.Counter(x for a, b in zip(latest.user_a, latest.user_b) if a in fans and b in fans
                                       for x in (a, b))
    # In the rule, two fans cross only in a unit that is not a crowd: at most CROWD_USERS people there.
    assert max(fan_partners.values(), default=0) <= CROWD_USERS
    assert len(latest) > 30, "the city around the crowd must still produce crossings"

    peaks: dict[int, int] = {}
    stop = threading.Event()
    with running_workers(s, count=2) as procs:
        sampler = threading.Thread(target=_rss_sampler, args=([p.pid for p in procs], peaks, stop), daemon=True)
        sampler.start()
        prod = producer(s)
        # Until the crowd's 30th person, then (once the first crowd crossings are out) the rest: the
        # crossings sent before the unit became a crowd must then be withdrawn.
        gathering = first + 15.0
        for phase, rows in enumerate((df[df["ts"] < gathering], df[df["ts"] >= gathering])):
            for row in rows.itertuples():
                if row.user_id.startswith("end-marker-"):  # one to each partition, after everything else
                    continue
                send_json(prod, s.topic("geo-pings"), row.user_id, {
                    "user_id": row.user_id, "ts": int(round(row.ts * 1000)), "lat": row.lat, "lon": row.lon,
                    "accuracy_m": row.accuracy_m})
            prod.flush()
            if phase == 0:
                early = _wait_for_fan_pairs(s, fans)
                assert early, "the crowd's first people must cross before it is a crowd"
        for row in df[df["user_id"].str.startswith("end-marker-")].itertuples():
            prod.send(s.topic("geo-pings"), key=row.user_id.encode(), partition=int(row.user_id.rsplit("-", 1)[1]),
                      value=json.dumps({"user_id": row.user_id, "ts": int(round(row.ts * 1000)), "lat": row.lat,
                                        "lon": row.lon, "accuracy_m": row.accuracy_m}).encode())
        prod.flush()
        wait_received(s, {"geo-pings": len(df)}, timeout_s=240)
        want = {}
        for a, b, ts, place, band_ in latest.itertuples(index=False):
            for user, other in ((a, b), (b, a)):
                want[crossing_key(user, other)] = (format_ts(ts), place, band_)
        deadline = time.monotonic() + 120
        while True:
            records = consume_all(s, "crossings")
            final = {}
            for r in records:
                final[r.key] = None if r.value is None else tuple(json.loads(r.value)[f] for f in ("ts", "place", "distance_band"))
            shown = {k: v for k, v in final.items() if v is not None}
            if shown == want or time.monotonic() > deadline:
                break
            time.sleep(3)
        check = check_crossings(s, [(r.key, None if r.value is None else json.loads(r.value)) for r in records])
        stop.set()
        sampler.join()
    assert shown == want  # the final record per key, as a reader of the compacted topic sees it
    assert check.identical, check
    tombstones = sum(r.value is None for r in records)
    assert tombstones > 0, "crossings sent before their unit became a crowd must have been withdrawn"
    shown_fans = collections.Counter(k.split(b"|", 1)[0] for k in shown
                                     if k.split(b"|", 1)[0].decode() in fans and k.split(b"|", 1)[1].decode() in fans)
    assert max(shown_fans.values(), default=0) <= CROWD_USERS  # each fan is told of at most CROWD_USERS fans
    assert peaks and max(peaks.values()) < MEMORY_BOUND_KB, peaks
    print(f"crowd e2e: {len(df)} pings, {len(latest)} pairs, {tombstones} withdrawals as tombstones, {len(records)} records, "
          f"peak worker RSS {max(peaks.values()) / 1024:.0f} MiB")
