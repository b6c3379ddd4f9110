"""Where an accepted event may go: consent, erasure and sensitive zones gate every destination.

One rule for the worker and for offline tools:

* a ping is dropped (used for nothing) unless the user's consent allows geolocation at the ping's
  time; an erased account (no schedule) allows nothing. An accepted ping may still feed no stage
  here (geolocation on, crossings off, no partner opt-in): it serves the app only;
* it feeds crossings only with crossings consent (the detector applies zones and accuracy itself);
* it feeds partner statistics only with a valid partner-sharing opt-in and outside every
  sensitive zone, as its base-resolution H3 cell, keyed by that cell's coarsest ancestor (the
  region one statistics partition decides on its own);
* a connection log feeds connection statistics unless the account was erased: technical data is
  used for statistics without consent, and never with a user id attached (anonymizers.connection).

The property tests hold: an opted-out or erased user's event has no destination.
"""
from __future__ import annotations

from typing import NamedTuple

import h3

from anonymizers.consent import Purpose, PurposeSchedule
from anonymizers.kanon import KAnonParams
from geo.zones import SensitiveZones


class PingDestinations(NamedTuple):
    """Whether a ping is used at all, and the stages it feeds: crossings, partner statistics (cell, region)."""

    accepted: bool  # geolocation consent at the ping's time: used to provide the service (else dropped)
    crossings: bool = False
    partner_cell: str | None = None  # H3 cell at the base resolution
    partner_region: str | None = None  # its ancestor at the coarsest resolution: the statistics key


DROPPED = PingDestinations(False)
_SERVICE_ONLY = PingDestinations(True)
_CROSSINGS_ONLY = PingDestinations(True, True)


def ping_destinations(schedule: PurposeSchedule | None, ts: float, lat: float, lon: float,
                      zones: SensitiveZones | None, kanon: KAnonParams) -> PingDestinations:
    """The stages a valid ping of a user with this consent schedule (None: erased) may feed."""
    purposes = schedule.at(ts) if schedule is not None else frozenset()
    if Purpose.GEOLOCATION not in purposes:
        return DROPPED
    crossings = Purpose.CROSSINGS in purposes
    if Purpose.PARTNER_SHARING not in purposes or (zones and zones.contains(lat, lon)):
        return _CROSSINGS_ONLY if crossings else _SERVICE_ONLY
    cell = h3.latlng_to_cell(lat, lon, kanon.base_resolution)
    return PingDestinations(True, crossings, cell, h3.cell_to_parent(cell, kanon.coarsest_resolution))


def feeds_connection_statistics(erased: bool) -> bool:
    """Whether a valid connection log feeds connection statistics (only an erased account's does not)."""
    return not erased
