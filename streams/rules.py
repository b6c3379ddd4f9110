"""The core's parameters for this worker, built once from the settings on first use.

Nothing here runs at import: the pseudonym secret (which may be created in the home folder for
local development) and the sensitive zones (read from a file) are loaded when a stage first asks.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import h3

from anonymizers.connection import validate_group_by
from anonymizers.dp import DPParams, PrivacyBudget, privacy_budget, publication_threshold
from anonymizers.kanon import KAnonParams
from anonymizers.pseudonym import Pseudonymizer
from anonymizers.retention import DAY_S, InactivityParams
from anonymizers.servicearea import ServiceArea
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
    dp: DPParams | None  # one shard: the ingest stage bounds each user's cells over all partitions
    dp_area: ServiceArea | None  # the declared service area (DP over it: pure epsilon, threshold k)
    dp_cells: dict[int, frozenset[str]]  # the area's cells each statistics partition publishes
    dp_budget: PrivacyBudget | None
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
        dp, area, cells = dp_rules(settings)
        return cls(
            limits=Limits(max_bytes=settings.max_message_bytes, max_future_skew_s=settings.max_future_skew_s),
            crossing=settings.crossing_params(),
            zones=SensitiveZones.from_geojson(settings.zones_path) if settings.zones_path else None,
            kanon=KAnonParams(k=settings.k, base_resolution=settings.h3_base_resolution,
                              coarsest_resolution=settings.h3_coarsest_resolution),
            group_by=validate_group_by(tuple(f.strip() for f in settings.connection_group_by.split(",") if f.strip())),
            dp=dp, dp_area=area, dp_cells=cells,
            dp_budget=privacy_budget(dp, settings.stats_window_s, area is not None) if dp else None,
            secret=secret,
            pseudonyms=Pseudonymizer(secret, settings.pseudonym_rotation_s),
            inactivity=InactivityParams(inactive_s=settings.inactivity_days * DAY_S,
                                        grace_s=settings.inactivity_grace_days * DAY_S),
            consent_max_age_months=settings.consent_max_age_months,
            stats_window_s=settings.stats_window_s,
            stats_lateness_s=settings.stats_lateness_s,
        )


def partner_statistics_statement(r: Rules) -> str:
    """What partner-statistics publishes under these rules and, with DP, the (epsilon, delta) per window and day."""
    if r.dp is None:
        return (f"partner-statistics: k-anonymous regions (k = {r.kanon.k}), no differential privacy "
                "(CROSSPATHS_DP_EPSILON=0)")
    where = (f"every cell of the declared area ({len(r.dp_area.cells)} cells, {r.dp_area.area_km2:.0f} km²) gets a "
             f"noisy count, published from k = {r.kanon.k}" if r.dp_area is not None else
             f"cells seen in the data, published from a noisy count of "
             f"{max(r.kanon.k, publication_threshold(r.dp))}")
    return (f"partner-statistics: differential privacy at H3 resolution {r.dp.resolution}, {where}; each user "
            f"counted in at most {r.dp.max_cells_per_user} cell(s) per window, their first ones (sensitivity "
            f"{r.dp.sensitivity}); {r.dp_budget.statement()}")


def stats_partition(cell: str, settings: Settings) -> int:
    """The stats-cells partition holding a cell's counts: its statistics key's (outbox.key_partition)."""
    key = h3.cell_to_parent(cell, settings.h3_coarsest_resolution)
    return zlib.crc32(key.encode()) % settings.partitions


DP_RESOLUTION_OVER_AN_AREA = 8  # ~0.7 km² cells: 110-140 per hour of the simulated city (bench/bench_dp.py)
DP_RESOLUTION_FROM_DATA = 7  # ~5 km² cells: fewer, fuller cells clear the (epsilon, delta) threshold


def dp_rules(settings: Settings) -> tuple[DPParams | None, ServiceArea | None, dict[int, frozenset[str]]]:
    """The DP parameters, the declared area and its cells per statistics partition."""
    if not settings.dp_epsilon:
        if settings.dp_domain is not None:
            raise ValueError(f"dp_domain={str(settings.dp_domain)!r} is set but dp_epsilon is 0 (off): "
                             "set CROSSPATHS_DP_EPSILON > 0, or unset CROSSPATHS_DP_DOMAIN")
        return None, None, {}
    res = settings.dp_resolution
    if res is None:
        res = DP_RESOLUTION_OVER_AN_AREA if settings.dp_domain is not None else DP_RESOLUTION_FROM_DATA
    if not settings.h3_coarsest_resolution <= res <= settings.h3_base_resolution:
        # Coarser than the statistics key, one noisy cell would be counted apart in several partitions.
        raise ValueError(f"dp_resolution={res} must be in [h3_coarsest_resolution={settings.h3_coarsest_resolution}, "
                         f"h3_base_resolution={settings.h3_base_resolution}]")
    area = ServiceArea.from_file(settings.dp_domain, res) if settings.dp_domain is not None else None
    cells: dict[int, set[str]] = {}
    for cell in area.cells if area else ():
        cells.setdefault(stats_partition(cell, settings), set()).add(cell)
    # One shard: the ingest stage, which reads each user's pings in order, counts a user in their first m
    # cells of a window over all statistics partitions together (streams.stages.contribution).
    dp = DPParams(epsilon=settings.dp_epsilon, max_cells_per_user=settings.dp_max_cells_per_user,
                  delta=settings.dp_delta, resolution=res)
    return dp, area, {p: frozenset(c) for p, c in cells.items()}


@functools.cache
def rules() -> Rules:
    """This worker's rules, from the process-wide settings (built on the first call)."""
    return Rules.from_settings(get_settings())
