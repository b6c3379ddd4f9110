"""A simulated city: users walking, commuting and meeting at shared places.

Pure generation (no Kafka here): `simulate_city` yields (topic, key, value) in
event-time order, deterministic for a seed and a start time. The CLI produces
them to Kafka.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from anonymizers.kanon import KAnonParams
from schemas.timefmt import format_ts

# Paris, inside the Périphérique.
CITY_BBOX = (48.815, 2.255, 48.900, 2.415)  # lat_min, lon_min, lat_max, lon_max
M_PER_DEG_LAT = 111_320.0

USER_AGENTS = [
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Mobile/15E148 Safari/604.1", 0.30),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0.6478.122 Mobile Safari/537.36", 0.25),
    ("Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36", 0.10),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0.0.0 Safari/537.36", 0.12),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Safari/605.1.15", 0.08),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0", 0.05),
    ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Mobile/15E148 Safari/604.1", 0.05),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87", 0.05),
]
LANGUAGES = [("fr-FR,fr;q=0.9,en;q=0.8", 0.62), ("en-US,en;q=0.9", 0.14), ("en-GB,en;q=0.9,fr;q=0.5", 0.05),
             ("es-ES,es;q=0.9", 0.05), ("de-DE,de;q=0.9,en;q=0.7", 0.04), ("ar-MA,ar;q=0.9,fr;q=0.8", 0.04),
             ("zh-CN,zh;q=0.9", 0.04), ("it-IT,it;q=0.9", 0.02)]
# (ISP, IPv4 first octets pool, IPv6 /32 prefix)
ISPS = [("Orange", (90, 92, 86), "2a01:cb00"), ("Free", (82, 88, 78), "2a01:e0a"),
        ("SFR", (77, 109, 80), "2a02:8400"), ("Bouygues Telecom", (176, 89, 128), "2001:861")]
EVENTS = [("app_open", 0.6), ("page_view", 0.3), ("login", 0.1)]


@dataclass(frozen=True)
class SimulationParams:
    """Size and mix of the simulated workload."""

    users: int = 1500
    hours: float = 2.0
    start: float = 0.0  # epoch seconds of the first event
    seed: int = 7
    places: int = 60
    ping_interval_s: float = 60.0
    logs_per_hour: float = 3.0
    malformed_share: float = 0.01
    partner_opt_in_share: float = 0.4
    geolocation_off_share: float = 0.05
    crossings_off_share: float = 0.08
    opt_out_mid_run: int = 20
    opt_in_mid_run: int = 20
    deletions_mid_run: int = 5

    def __post_init__(self) -> None:
        if self.users < 2:
            raise ValueError(f"users={self.users} must be >= 2")
        if not 0 < self.hours <= 48:
            raise ValueError(f"hours={self.hours} must be in (0, 48]")
        if not 0 <= self.malformed_share < 1:
            raise ValueError(f"malformed_share={self.malformed_share} must be in [0, 1)")


def _pick(rng: np.random.Generator, weighted: list[tuple[object, float]]):
    items, weights = zip(*weighted)
    w = np.asarray(weights, dtype=float)
    return items[rng.choice(len(items), p=w / w.sum())]


def _ip(rng: np.random.Generator, isp: tuple) -> str:
    if rng.random() < 0.3:
        return f"{isp[2]}:{rng.integers(0, 0xffff):x}:{rng.integers(0, 0xffff):x}::{rng.integers(1, 0xffff):x}"
    first = int(rng.choice(isp[1]))
    return f"{first}.{rng.integers(0, 256)}.{rng.integers(0, 256)}.{rng.integers(1, 255)}"


def _random_point(rng: np.random.Generator) -> tuple[float, float]:
    lat0, lon0, lat1, lon1 = CITY_BBOX
    return float(rng.uniform(lat0, lat1)), float(rng.uniform(lon0, lon1))


def _track(rng: np.random.Generator, params: SimulationParams, places: np.ndarray, home, work, favourites):
    """Ping times and true positions of one user: stays at places joined by walks or metro rides."""
    t, end = params.start + float(rng.uniform(0, 600)), params.start + params.hours * 3600
    here = home if rng.random() < 0.5 else work
    stops = [home, work] + [tuple(places[i]) for i in favourites]
    while t < end:
        stay = float(rng.uniform(10, 60)) * 60
        while stay > 0 and t < end:
            yield t, here
            step = float(rng.uniform(0.6, 1.4)) * params.ping_interval_s
            t, stay = t + step, stay - step
        nxt = stops[int(rng.integers(len(stops)))]
        dist = math.hypot((nxt[0] - here[0]) * M_PER_DEG_LAT,
                          (nxt[1] - here[1]) * M_PER_DEG_LAT * math.cos(math.radians(here[0])))
        speed = 1.4 if dist < 1500 else 9.0  # walk, or metro
        duration = dist / speed
        t0 = t
        while t < t0 + duration and t < end:
            f = (t - t0) / duration if duration > 0 else 1.0
            yield t, (here[0] + f * (nxt[0] - here[0]), here[1] + f * (nxt[1] - here[1]))
            t += float(rng.uniform(0.6, 1.4)) * params.ping_interval_s
        here = nxt


def _malform(rng: np.random.Generator, key: bytes, value: bytes) -> tuple[bytes, bytes | None]:
    """One realistic producer mistake applied to a good (key, value)."""
    doc = json.loads(value)
    kind = int(rng.integers(9))
    if kind == 0:
        return key, value[: max(1, len(value) // 2)]  # truncated JSON
    if kind == 1:
        return key, b""
    if kind == 2:
        return key, value.replace(b'"', b"\xff", 1)  # not UTF-8
    if kind == 3 and "lat" in doc:
        doc["lat"] = round(float(rng.uniform(90.5, 200)), 4)
    elif kind == 4:
        doc.pop("ts", None)
    elif kind == 5:
        doc["ts"] = "yesterday at noon"
    elif kind == 6 and "ip" in doc:
        doc["ip"] = "300.1.2.3"
    elif kind == 7:
        doc["user_id"] = 12345
    else:
        return b"someone-else", value  # key does not match user_id
    return key, json.dumps(doc).encode()


def simulate_city(params: SimulationParams) -> Iterator[tuple[str, bytes, bytes | None]]:
    """Every simulated message as (logical topic, key, value), in event-time order."""
    rng = np.random.default_rng(params.seed)
    places = np.array([_random_point(rng) for _ in range(params.places)])
    users = [f"user-{i:06d}" for i in range(params.users)]
    events: list[tuple[float, int, str, bytes, bytes]] = []
    seq = 0

    def add(ts: float, topic: str, user: str, doc: dict) -> None:
        nonlocal seq
        events.append((ts, seq, topic, user.encode(), json.dumps(doc, separators=(",", ":")).encode()))
        seq += 1

    # Initial consent state, one record per user, just before the run.
    for user in users:
        geo_on = rng.random() >= params.geolocation_off_share
        add(params.start - 60, "consents", user, {
            "user_id": user, "updated_at": format_ts(params.start - 86400 * float(rng.uniform(1, 300))),
            "geolocation": bool(geo_on), "crossings": bool(rng.random() >= params.crossings_off_share),
            "partner_sharing": bool(rng.random() < params.partner_opt_in_share), "deleted": False})

    for user in users:
        home = _random_point(rng)
        work = tuple(places[int(rng.integers(len(places)))])
        favourites = rng.choice(len(places), size=3, replace=False)
        isp = ISPS[int(rng.integers(len(ISPS)))]
        ua, lang = _pick(rng, USER_AGENTS), _pick(rng, LANGUAGES)
        ip = _ip(rng, isp)
        for ts, (lat, lon) in _track(rng, params, places, home, work, favourites):
            accuracy = float(rng.choice([5, 8, 12, 20, 35, 65, 150], p=[.2, .25, .2, .15, .1, .06, .04]))
            sigma = accuracy / 2
            noisy_lat = lat + rng.normal(0, sigma) / M_PER_DEG_LAT
            noisy_lon = lon + rng.normal(0, sigma) / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
            ts_field = int(ts * 1000) if rng.random() < 0.5 else format_ts(ts)
            add(ts, "geo-pings", user, {"user_id": user, "ts": ts_field, "lat": round(noisy_lat, 6),
                                        "lon": round(noisy_lon, 6), "accuracy_m": accuracy})
        n_logs = rng.poisson(params.logs_per_hour * params.hours)
        for ts in np.sort(rng.uniform(params.start, params.start + params.hours * 3600, size=n_logs + 1)):
            if rng.random() < 0.15:
                ip = _ip(rng, isp)  # new network address
            add(float(ts), "connection-logs", user, {
                "user_id": user, "ts": format_ts(float(ts)), "ip": ip, "user_agent": ua, "isp": isp[0],
                "language": lang, "event": _pick(rng, EVENTS)})

    # Consent changes during the run.
    changed = rng.choice(len(users), size=min(len(users),
                         params.opt_out_mid_run + params.opt_in_mid_run + params.deletions_mid_run), replace=False)
    end = params.start + params.hours * 3600
    for n, idx in enumerate(changed):
        user, ts = users[idx], float(rng.uniform(params.start + 600, end - 600))
        doc = {"user_id": user, "updated_at": format_ts(ts)}
        if n < params.opt_out_mid_run:
            doc.update(geolocation=True, crossings=False, partner_sharing=False)
        elif n < params.opt_out_mid_run + params.opt_in_mid_run:
            doc.update(geolocation=True, crossings=True, partner_sharing=True)
        else:
            doc.update(deleted=True)
        add(ts, "consents", user, doc)

    events.sort(key=lambda e: (e[0], e[1]))
    for ts, _, topic, key, value in events:
        if topic != "consents" and rng.random() < params.malformed_share:
            key, value = _malform(rng, key, value)
        yield topic, key, value


def count_messages(params: SimulationParams) -> int:
    """How many messages simulate_city(params) yields (runs the generator)."""
    return sum(1 for _ in simulate_city(params))


def partner_memberships(params: SimulationParams, kanon: KAnonParams, window_s: int = 3600,
                        lateness_s: int = 300) -> dict[float, dict[str, set[str]]]:
    """The simulated city's partner-statistics windows: window start -> base cell -> user ids.

    Replays simulate_city(params) in event-time order through the core's rules (decode, last-writer-
    wins consent, ping destinations); a withdrawal or deletion takes the user out of the windows
    still open (end + lateness after it). What the worker would count, give or take the order in
    which it happens to process a consent and the pings around it.
    """
    from anonymizers.consent import Consent, ConsentOutcome, PurposeSchedule, decide_consent
    from anonymizers.destinations import ping_destinations
    from schemas.events import Rejection, decode

    consents: dict[str, Consent] = {}
    erased: set[str] = set()
    windows: dict[float, dict[str, set[str]]] = {}
    for topic, key, value in simulate_city(params):
        if topic == "consents":
            record = decode("consent", value, key=key)
            if isinstance(record, Rejection):
                continue
            consent = Consent(user_id=record.user_id, updated_at=record.updated_at, geolocation=record.geolocation,
                              crossings=record.crossings, partner_sharing=record.partner_sharing,
                              deleted=record.deleted)
            change = decide_consent(consents.get(record.user_id), consent, record.user_id in erased)
            if change.outcome is ConsentOutcome.ERASE:
                erased.add(record.user_id)
                consents.pop(record.user_id, None)
            elif change.outcome is ConsentOutcome.RECORD:
                consents[record.user_id] = consent
            if change.outcome is ConsentOutcome.ERASE or (change.outcome is ConsentOutcome.RECORD
                                                          and not (consent.partner_sharing and consent.geolocation)):
                for start, cells in windows.items():
                    if start + window_s + lateness_s > consent.updated_at:
                        for users in cells.values():
                            users.discard(record.user_id)
        elif topic == "geo-pings":
            ping = decode("ping", value, key=key)
            if isinstance(ping, Rejection) or ping.user_id in erased:
                continue
            schedule = PurposeSchedule.of(consents.get(ping.user_id))
            where = ping_destinations(schedule, ping.ts, ping.lat, ping.lon, None, kanon)
            if where.partner_cell is not None:
                start = ping.ts - ping.ts % window_s
                windows.setdefault(start, {}).setdefault(where.partner_cell, set()).add(ping.user_id)
    return {start: {c: u for c, u in cells.items() if u} for start, cells in sorted(windows.items())}
