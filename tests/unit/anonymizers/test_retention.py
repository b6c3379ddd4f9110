"""Inactivity rules with a controlled clock, and erasure markers."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonymizers.retention import (DAY_S, Action, Activity, InactivityParams, ReceiptDraft, erasure_of, erasure_tag,
                                   next_action, on_login)

P = InactivityParams(inactive_s=3 * 365 * DAY_S, grace_s=30 * DAY_S)
T = 1_700_000_000.0


@pytest.mark.parametrize("activity, now, expected", [
    (Activity(T), T, Action.NONE),
    (Activity(T), T + 3 * 365 * DAY_S - 1, Action.NONE),
    (Activity(T), T + 3 * 365 * DAY_S, Action.NOTIFY),
    (Activity(T, notified_at=T + 1100 * DAY_S), T + 1100 * DAY_S + 29 * DAY_S, Action.NONE),
    (Activity(T, notified_at=T + 1100 * DAY_S), T + 1100 * DAY_S + 30 * DAY_S, Action.ERASE),
])
def test_next_action(activity, now, expected):
    assert next_action(activity, now, P) is expected


def test_login_cancels_a_pending_notice():
    notified = Activity(T, notified_at=T + 1100 * DAY_S)
    back = on_login(notified, T + 1101 * DAY_S)
    assert back == Activity(T + 1101 * DAY_S, None)
    assert next_action(back, T + 1101 * DAY_S + 30 * DAY_S, P) is Action.NONE
    assert on_login(back, T) == back  # an older login changes nothing


def test_erasure_tag_is_keyed_and_stable():
    a = erasure_tag(b"k" * 32, "alice")
    assert a == erasure_tag(b"k" * 32, "alice") and a != erasure_tag(b"j" * 32, "alice")
    assert "alice" not in a and len(a) == 32


@pytest.mark.parametrize("bad", [dict(inactive_s=0), dict(grace_s=-1)])
def test_params_name_the_bad_value(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        InactivityParams(**bad)


# --------------------------------------------------------------------------- erasure receipts

def _erasure_reports(partitions: int) -> list[dict]:
    stages = ("detector_pings", "crossing_pairs", "location_memberships", "connection_memberships")
    ingest = {"stage": "ingest", "expect": len(stages) * partitions, "reason": "account_deleted",
              "requested_at": 100.0, "removed": {"consent_state": 1, "activity": 1}}
    return [ingest] + [{"stage": s, "partition": p, "removed": p + 1} for s in stages for p in range(partitions)]


def test_a_receipt_completes_when_every_stage_partition_has_answered():
    reports = _erasure_reports(partitions=3)
    draft = ReceiptDraft()
    for r in reports[:-1]:
        draft.add(r)
        assert not draft.complete
    draft.add(reports[-1])
    assert draft.complete
    assert draft.purged == {"consent_state": 1, "activity": 1, "detector_pings": 6, "crossing_pairs": 6,
                            "location_memberships": 6, "connection_memberships": 6}


@given(partitions=st.integers(1, 4), data=st.data())
def test_reports_delivered_twice_never_complete_a_receipt_early_nor_count_twice(partitions, data):
    """At least once delivery: any order, any report repeated. The receipt completes exactly when the
    last distinct answer arrives, with the counts of each answer taken once."""
    reports = _erasure_reports(partitions)
    order = data.draw(st.permutations(reports))
    repeats = data.draw(st.lists(st.sampled_from(reports), max_size=10))
    stream = list(order)
    for r in repeats:
        stream.insert(data.draw(st.integers(0, len(stream))), r)
    once, draft = ReceiptDraft(), ReceiptDraft()
    for r in reports:
        once.add(r)
    seen = []
    for r in stream:
        draft.add(r)
        if r not in seen:
            seen.append(r)
        assert draft.complete == (len(seen) == len(reports))
    assert draft.purged == once.purged and draft.expect == once.expect


def test_a_receipt_draft_round_trips_through_json():
    draft = ReceiptDraft()
    for r in _erasure_reports(partitions=2)[:4]:
        draft.add(r)
    again = ReceiptDraft.from_json(json.loads(json.dumps(draft.to_json())))
    assert again == draft and not again.complete
    for r in _erasure_reports(partitions=2)[4:]:
        again.add(r)
    assert again.complete


def test_every_report_names_the_erasure_it_belongs_to():
    ingest, *answers = _erasure_reports(partitions=1)
    answers = [dict(a, v=ingest["requested_at"]) for a in answers]
    assert {erasure_of(r) for r in [ingest, *answers]} == {ingest["requested_at"]}
    assert erasure_of({"stage": "crossing_pairs", "partition": 0, "removed": 1}) is None


# --------------------------------------------------------------------------- purge plans, inactivity scans

from anonymizers.consent import Purpose  # noqa: E402
from anonymizers.retention import (InactivityScan, PurgeTarget, inactivity_actions, plan_erasure,  # noqa: E402
                                   plan_withdrawal)


def test_an_erasure_purges_every_stage_and_waits_for_every_partition():
    plan = plan_erasure("account_deleted")
    assert plan.targets == set(PurgeTarget) and plan.report and plan.retracts_crossings
    assert plan.requests(partitions=4) == 16  # one report per stage partition


@pytest.mark.parametrize("withdrawn, targets", [
    (set(), None),
    ({Purpose.CROSSINGS}, {PurgeTarget.DETECTOR, PurgeTarget.PAIRS}),
    ({Purpose.PARTNER_SHARING}, {PurgeTarget.LOCATIONS}),
    ({Purpose.GEOLOCATION, Purpose.CROSSINGS, Purpose.PARTNER_SHARING},
     {PurgeTarget.DETECTOR, PurgeTarget.PAIRS, PurgeTarget.LOCATIONS}),
])
def test_a_withdrawal_purges_what_the_withdrawn_purposes_fed_without_a_receipt(withdrawn, targets):
    plan = plan_withdrawal(frozenset(withdrawn))
    if targets is None:
        assert plan is None
    else:
        assert plan.targets == targets and not plan.report
        assert PurgeTarget.CONNECTIONS not in plan.targets  # technical data needs no consent


def test_inactivity_actions_name_only_the_users_due():
    activities = [("a", Activity(T)), ("b", Activity(T + 400 * DAY_S)),
                  ("c", Activity(T, notified_at=T + 3 * 365 * DAY_S))]
    now = T + 3 * 365 * DAY_S + 30 * DAY_S
    assert inactivity_actions(activities, now, P) == [("a", Action.NOTIFY), ("c", Action.ERASE)]


def test_an_inactivity_scan_is_due_once_per_interval_of_event_time():
    scan = InactivityScan(every_s=3600.0)
    assert not scan.due(float("-inf"))  # no clock yet (some partition has sent nothing)
    assert scan.due(T) and not scan.due(T + 3599) and scan.due(T + 3600) and not scan.due(T + 100)
