"""Where an accepted event may go: an opted-out or erased user's event goes nowhere."""
from __future__ import annotations

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymizers.consent import Consent, Purpose, PurposeSchedule
from anonymizers.destinations import DROPPED, feeds_connection_statistics, ping_destinations
from anonymizers.kanon import KAnonParams
from geo.zones import SensitiveZones

T0 = 1_750_000_000.0
KANON = KAnonParams(k=10, base_resolution=9, coarsest_resolution=5)
ZONES = SensitiveZones.paris_sample()


def schedule(**kw) -> PurposeSchedule:
    return PurposeSchedule.of(Consent(user_id="u", updated_at=T0, **kw))


@pytest.mark.parametrize("sched, accepted, crossings, shared", [
    (None, False, False, False),  # erased
    (PurposeSchedule.of(None), True, True, False),  # defaults: no partner opt-in
    (schedule(geolocation=False, partner_sharing=True), False, False, False),
    (schedule(crossings=False), True, False, False),  # serves the app only
    (schedule(crossings=False, partner_sharing=True), True, False, True),
    (schedule(partner_sharing=True), True, True, True),
    (schedule(partner_sharing=True, deleted=True), False, False, False),
])
def test_ping_destinations(sched, accepted, crossings, shared):
    where = ping_destinations(sched, T0 + 60, 45.76, 4.83, ZONES, KANON)
    assert (where.accepted, where.crossings, where.partner_cell is not None) == (accepted, crossings, shared)
    if shared:
        assert where.partner_cell == h3.latlng_to_cell(45.76, 4.83, 9)
        assert where.partner_region == h3.cell_to_parent(where.partner_cell, 5)


def test_an_expired_opt_in_and_a_sensitive_zone_keep_a_ping_out_of_partner_statistics():
    opted_in = schedule(partner_sharing=True)
    assert ping_destinations(opted_in, T0 + 400 * 86400, 45.76, 4.83, None, KANON).partner_cell is None
    lat, lon = _inside(ZONES)
    where = ping_destinations(opted_in, T0, lat, lon, ZONES, KANON)
    assert where.accepted and where.crossings and where.partner_cell is None


def _inside(zones: SensitiveZones) -> tuple[float, float]:
    for lat in [48.80 + i * 0.001 for i in range(150)]:
        for lon in [2.25 + j * 0.001 for j in range(200)]:
            if zones.contains(lat, lon):
                return lat, lon
    raise AssertionError("no point of the sample zones found")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.builds(Consent, user_id=st.just("u"), updated_at=st.just(T0),
                                      geolocation=st.booleans(), crossings=st.booleans(),
                                      partner_sharing=st.booleans(), deleted=st.booleans())),
       st.booleans(), st.floats(-3e7, 3e7), st.floats(-90, 90), st.floats(-180, 180))
def test_no_purpose_no_destination(consent, erased, dt, lat, lon):
    """The property: a ping goes to a stage only for a purpose the consent allows at its time."""
    sched = None if erased else PurposeSchedule.of(consent)
    ts = T0 + dt
    where = ping_destinations(sched, ts, lat, lon, ZONES, KANON)
    allowed = set() if erased else sched.at(ts)
    if Purpose.GEOLOCATION not in allowed:
        assert where == DROPPED
    assert where.crossings <= (Purpose.CROSSINGS in allowed)
    assert (where.partner_cell is not None) <= (Purpose.PARTNER_SHARING in allowed and not ZONES.contains(lat, lon))


def test_connection_logs_of_an_erased_account_go_nowhere():
    assert feeds_connection_statistics(erased=False) and not feeds_connection_statistics(erased=True)
