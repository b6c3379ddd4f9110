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
