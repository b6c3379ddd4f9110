"""Consent rules: defaults, withdrawal, deletion, and the 13-month opt-in expiry."""
from __future__ import annotations

import pytest

from anonymizers.consent import Consent, Purpose, add_months, allowed_purposes, allows, withdrawn
from schemas.timefmt import parse_ts

T0 = parse_ts("2025-01-31T12:00:00Z")
G, C, PS = Purpose.GEOLOCATION, Purpose.CROSSINGS, Purpose.PARTNER_SHARING


def consent(**kw) -> Consent:
    return Consent(user_id="u", updated_at=T0, **kw)


@pytest.mark.parametrize("state, at, expected", [
    (None, T0, {G, C}),
    (consent(), T0, {G, C}),
    (consent(geolocation=False), T0, set()),
    (consent(crossings=False), T0, {G}),
    (consent(partner_sharing=True), T0, {G, C, PS}),
    (consent(partner_sharing=True, geolocation=False), T0, set()),
    (consent(partner_sharing=True, deleted=True), T0, set()),
    (consent(partner_sharing=True), parse_ts("2026-02-27T12:00:00Z"), {G, C, PS}),
    (consent(partner_sharing=True), parse_ts("2026-02-28T11:59:59Z"), {G, C, PS}),
    (consent(partner_sharing=True), parse_ts("2026-02-28T12:00:00Z"), {G, C}),  # 13 months, expired
    (consent(partner_sharing=True), parse_ts("2027-01-01T00:00:00Z"), {G, C}),
])
def test_allowed_purposes(state, at, expected):
    assert allowed_purposes(state, at) == expected


def test_add_months_clamps_to_month_end():
    assert add_months(T0, 1) == parse_ts("2025-02-28T12:00:00Z")
    assert add_months(T0, 13) == parse_ts("2026-02-28T12:00:00Z")


def test_withdrawn_lists_purposes_switched_off():
    assert withdrawn(None, consent(crossings=False)) == {C}
    assert withdrawn(consent(partner_sharing=True), consent(deleted=True)) == {G, C, PS}
    assert withdrawn(consent(crossings=False), consent()) == set()


def test_deleted_allows_nothing_ever():
    dead = consent(deleted=True, partner_sharing=True)
    assert not any(allows(dead, p, T0 + d) for p in Purpose for d in (0, 1e6, 1e9))


from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

from anonymizers.consent import PurposeSchedule  # noqa: E402

consents = st.none() | st.builds(
    Consent, user_id=st.just("u"), updated_at=st.floats(946_684_800, 4_000_000_000),
    geolocation=st.booleans(), crossings=st.booleans(), partner_sharing=st.booleans(), deleted=st.booleans())


@hsettings(max_examples=300, deadline=None)
@given(consent=consents, offsets=st.lists(st.floats(-1e8, 1e8), min_size=1, max_size=5),
       months=st.integers(1, 25))
def test_purpose_schedule_equals_allowed_purposes(consent, offsets, months):
    schedule = PurposeSchedule.of(consent, months)
    base = consent.updated_at if consent else 1_796_000_000.0
    for at in [base + o for o in offsets] + ([schedule.expires_at, schedule.expires_at - 1e-3]
                                             if consent else []):
        assert schedule.at(at) == allowed_purposes(consent, at, months)


# --------------------------------------------------------------------------- last writer wins

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from anonymizers.consent import ConsentOutcome, WithdrawalGuards, decide_consent  # noqa: E402

RECORD, ERASE, STALE, ERASED = ConsentOutcome.RECORD, ConsentOutcome.ERASE, ConsentOutcome.STALE, ConsentOutcome.ERASED


def at(t: float, **kw) -> Consent:
    return Consent(user_id="u", updated_at=t, **kw)


@pytest.mark.parametrize("previous, incoming, erased, outcome, gone", [
    (None, at(T0), False, RECORD, set()),
    (None, at(T0, crossings=False), False, RECORD, {C}),  # from the defaults
    (at(T0, partner_sharing=True), at(T0 + 1, geolocation=False), False, RECORD, {G, C, PS}),
    (at(T0, crossings=False), at(T0 + 1), False, RECORD, set()),  # switching on withdraws nothing
    (at(T0 + 1), at(T0, crossings=False), False, STALE, set()),  # older than the recorded one
    (at(T0), at(T0, crossings=False), False, RECORD, {C}),  # same moment: the later-arriving record wins
    (at(T0), at(T0 + 1, deleted=True), False, ERASE, set()),
    (None, at(T0, deleted=True), False, ERASE, set()),
    (at(T0 + 1), at(T0, deleted=True), False, STALE, set()),  # an older deletion is stale too
    (None, at(T0 + 9), True, ERASED, set()),  # erased accounts stay erased, whatever arrives later
])
def test_decide_consent(previous, incoming, erased, outcome, gone):
    change = decide_consent(previous, incoming, erased)
    assert change.outcome is outcome and change.withdrawn == gone


_records = st.lists(st.builds(at, st.integers(0, 10**6).map(float), geolocation=st.booleans(),
                              crossings=st.booleans(), partner_sharing=st.booleans()),
                    min_size=1, max_size=8, unique_by=lambda c: c.updated_at)


def _apply_all(records):
    state = None
    for record in records:
        if decide_consent(state, record, erased=False).outcome is RECORD:
            state = record
    return state


@settings(max_examples=200, deadline=None)
@given(_records, st.randoms(use_true_random=False))
def test_the_newest_consent_wins_whatever_the_arrival_order(records, rnd):
    shuffled = list(records)
    rnd.shuffle(shuffled)
    assert _apply_all(shuffled) == max(records, key=lambda c: c.updated_at)


@settings(max_examples=200, deadline=None)
@given(_records)
def test_a_stale_record_never_changes_the_state_and_withdraws_nothing(records):
    state = _apply_all(records)
    for record in records:
        change = decide_consent(state, record, erased=False)
        if record.updated_at < state.updated_at:
            assert change.outcome is STALE and not change.withdrawn


# --------------------------------------------------------------------------- withdrawal guards


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 20).map(float)), max_size=6),
       st.sampled_from("abcd"), st.integers(0, 20).map(float), st.sampled_from("abcd"), st.integers(0, 20).map(float))
def test_a_guard_blocks_exactly_the_candidates_computed_before_a_withdrawal(withdrawals, a, va, b, vb):
    guards = WithdrawalGuards()
    for tag, version in withdrawals:
        guards.withdraw(tag, version, set_at=0.0)
    newest = {}
    for tag, version in withdrawals:
        newest[tag] = max(newest.get(tag, version), version)
    expected = va <= newest.get(a, -1.0) or vb <= newest.get(b, -1.0)
    assert guards.blocks(a, va, b, vb) is expected
    assert WithdrawalGuards.restore(guards.snapshot()).blocks(a, va, b, vb) is expected


def test_guards_are_forgotten_after_their_lifetime():
    guards = WithdrawalGuards()
    guards.withdraw("old", 5.0, set_at=100.0)
    guards.withdraw("new", 5.0, set_at=900.0)
    assert guards.forget_set_before(500.0) == ["old"]
    assert not guards.blocks("old", 1.0, "x", 1.0) and guards.blocks("new", 5.0, "x", 9.0)
    assert len(guards) == 1 and bool(guards)
