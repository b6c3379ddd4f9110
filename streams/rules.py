"""The core's parameters for this worker, built once from the settings on first use.

Nothing here runs at import: the pseudonym secret (which may be created in the home folder for
local development) and the sensitive zones (read from a file) are loaded when a stage first asks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from anonymizers.connection import validate_group_by
from anonymizers.dp import DPParams
from anonymizers.kanon import KAnonParams
from anonymizers.pseudonym import Pseudonymizer
from anonymizers.retention import DAY_S, InactivityParams
from geo.crossings import CrossingParams
from geo.zones import SensitiveZones
from schemas.events import Limits
from streams.settings import Settings, get_settings, pseudonym_secret


@dataclass(frozen=True)
class Rules:
    """Every core parameter object the stages pass to the core."""

    limits: Limits
    crossing: CrossingParams
    zones: SensitiveZones | None
    kanon: KAnonParams
    group_by: tuple[str, ...]
    dp: DPParams | None
    secret: bytes  # keys the erasure tags and the pseudonyms
    pseudonyms: Pseudonymizer
    inactivity: InactivityParams
    consent_max_age_months: int
    stats_window_s: int
    stats_lateness_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Rules":
        """The rules of these settings (reads the zones file and the pseudonym secret)."""
        if settings.pseudonym_rotation_s % settings.stats_window_s:
            # A window spanning a rotation would count one person under two pseudonyms.
            raise ValueError(f"pseudonym_rotation_s={settings.pseudonym_rotation_s} must be a multiple of "
                             f"stats_window_s={settings.stats_window_s}")
        secret = pseudonym_secret(settings)
        return cls(
            limits=Limits(max_bytes=settings.max_message_bytes, max_future_skew_s=settings.max_future_skew_s),
            crossing=settings.crossing_params(),
            zones=SensitiveZones.from_geojson(settings.zones_path) if settings.zones_path else None,
            kanon=KAnonParams(k=settings.k, base_resolution=settings.h3_base_resolution,
                              coarsest_resolution=settings.h3_coarsest_resolution),
            group_by=validate_group_by(tuple(f.strip() for f in settings.connection_group_by.split(",") if f.strip())),
            dp=DPParams(epsilon=settings.dp_epsilon, max_cells_per_user=settings.dp_max_cells_per_user,
                        delta=settings.dp_delta, resolution=settings.dp_resolution) if settings.dp_epsilon else None,
            secret=secret,
            pseudonyms=Pseudonymizer(secret, settings.pseudonym_rotation_s),
            inactivity=InactivityParams(inactive_s=settings.inactivity_days * DAY_S,
                                        grace_s=settings.inactivity_grace_days * DAY_S),
            consent_max_age_months=settings.consent_max_age_months,
            stats_window_s=settings.stats_window_s,
            stats_lateness_s=settings.stats_lateness_s,
        )


@functools.cache
def rules() -> Rules:
    """This worker's rules, from the process-wide settings (built on the first call)."""
    return Rules.from_settings(get_settings())
