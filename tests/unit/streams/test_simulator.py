"""The simulated city: deterministic, realistic mix, and crossings do happen."""
from __future__ import annotations

import json
from collections import Counter

import pandas as pd

from geo.crossings import CrossingParams
from geo.oracle import brute_force_pairs
from schemas.events import Rejection, decode
from streams.tools.simulator import SimulationParams, simulate_city

PARAMS = SimulationParams(users=60, hours=0.5, start=1_790_000_000.0, seed=3, malformed_share=0.05)


def test_same_seed_same_messages():
    assert list(simulate_city(PARAMS)) == list(simulate_city(PARAMS))
    other = SimulationParams(**{**PARAMS.__dict__, "seed": 4})
    assert list(simulate_city(other)) != list(simulate_city(PARAMS))


def test_mix_of_topics_malformed_and_valid_messages():
    messages = list(simulate_city(PARAMS))
    topics = Counter(t for t, _, _ in messages)
    assert topics["consents"] >= PARAMS.users and topics["geo-pings"] > 10 * PARAMS.users
    assert topics["connection-logs"] > 0
    now = PARAMS.start + PARAMS.hours * 3600 + 60
    kinds = {"geo-pings": "ping", "connection-logs": "connection-log", "consents": "consent"}
    results = [decode(kinds[t], v, now=now, key=k) for t, k, v in messages]
    rejected = [r for r in results if isinstance(r, Rejection)]
    share = len(rejected) / sum(1 for t, _, _ in messages if t != "consents")
    assert 0.02 < share < 0.09, share
    assert len({r.reason for r in rejected}) >= 5
    logs = [r for r in results if not isinstance(r, Rejection) and hasattr(r, "ip")]
    assert any(":" in r.ip for r in logs) and any("." in r.ip for r in logs)  # IPv6 and IPv4
    consents = [json.loads(v) for t, _, v in messages if t == "consents"]
    assert any(c.get("deleted") for c in consents) and any(c.get("crossings") is False for c in consents)


def test_events_come_in_event_time_order_and_people_cross():
    messages = list(simulate_city(SimulationParams(users=80, hours=0.5, start=1_790_000_000.0, seed=5,
                                                   malformed_share=0.0)))
    pings = [json.loads(v) for t, _, v in messages if t == "geo-pings"]
    ts = [p["ts"] if isinstance(p["ts"], int) else None for p in pings]
    frame = pd.DataFrame([{**p, "ts": decode("ping", json.dumps(p).encode(), now=2e9).ts} for p in pings])
    assert frame["ts"].is_monotonic_increasing
    assert len(brute_force_pairs(frame.head(3000), CrossingParams())) > 0
    assert any(t is not None for t in ts) and any(t is None for t in ts)  # epoch ms and RFC 3339 both used


def test_partner_memberships_are_the_opted_in_users_pings():
    from anonymizers.kanon import KAnonParams
    from streams.tools.simulator import partner_memberships

    params = SimulationParams(users=80, hours=1.0, start=1_790_000_000.0 - 1_790_000_000.0 % 3600, seed=3,
                              malformed_share=0.0, opt_out_mid_run=0, opt_in_mid_run=0, deletions_mid_run=0)
    opted = {json.loads(v)["user_id"] for t, _, v in simulate_city(params)
             if t == "consents" and json.loads(v)["partner_sharing"] and json.loads(v)["geolocation"]}
    windows = partner_memberships(params, KAnonParams())
    assert list(windows) == [params.start]
    seen = set().union(*windows[params.start].values())
    assert seen == opted and len(opted) > 10  # every opted-in user pings in the hour; nobody else counts
    assert partner_memberships(params, KAnonParams()) == windows


def test_partner_memberships_drop_a_user_who_withdraws():
    from anonymizers.kanon import KAnonParams
    from streams.tools.simulator import partner_memberships

    params = SimulationParams(users=80, hours=1.0, start=1_790_000_000.0 - 1_790_000_000.0 % 3600, seed=3,
                              malformed_share=0.0, opt_out_mid_run=10, opt_in_mid_run=0, deletions_mid_run=0)
    messages = list(simulate_city(params))
    out = {json.loads(v)["user_id"] for t, _, v in messages[params.users:]
           if t == "consents" and not json.loads(v)["partner_sharing"]}
    assert out
    seen = set().union(*partner_memberships(params, KAnonParams())[params.start].values())
    assert not seen & out
