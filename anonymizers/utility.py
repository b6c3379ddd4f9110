"""How useful one window's published location map is, measured against the window's memberships.

A *membership* is one user seen in one base cell during the window (what the window holds). It
is *published at resolution r* when the region covering its base cell was published at r (a
region's resolution is that of its enclosing cell), and *suppressed* when no published region
covers it. The measures, all over one window:

* ``regions`` against ``users // k`` and ``memberships // k`` (no k-anonymous map of distinct-user
  counts can have more regions than the latter);
* the share of memberships published at resolution >= 8 and >= 7, and suppressed;
* the mean area (km²) of the region a published membership is counted in.

Works for any publication whose regions carry ``members`` (cells, at the base resolution or
coarser), ``resolution`` and ``area_km2``: the H3 regions, the cell rule, a baseline's groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import h3


class MappedRegion(Protocol):
    members: tuple[str, ...]
    resolution: int

    @property
    def area_km2(self) -> float: ...


@dataclass(frozen=True, slots=True)
class MapUtility:
    """Utility measures of one window's published map (see module)."""

    regions: int
    users: int
    memberships: int
    at_res8: float
    at_res7: float
    suppressed: float
    mean_km2: float

    def room(self, k: int) -> tuple[int, int]:
        """floor(users / k) and floor(memberships / k)."""
        return self.users // k, self.memberships // k

    def line(self, k: int) -> str:
        """One line for people."""
        by_users, by_memberships = self.room(k)
        return (f"{self.regions} regions (users/k = {by_users}, memberships/k = {by_memberships}); "
                f"memberships at res >= 8: {self.at_res8:.0%}, >= 7: {self.at_res7:.0%}, "
                f"suppressed: {self.suppressed:.0%}; mean area per published membership {self.mean_km2:.2f} km²")


def measure_utility(regions: Sequence[MappedRegion], users_by_cell: Mapping[str, Iterable]) -> MapUtility:
    """Measure a window's published regions against the window's users per base cell."""
    owner: dict[str, int] = {}
    areas = [region.area_km2 for region in regions]
    for i, region in enumerate(regions):
        for member in region.members:
            if member in owner:
                raise ValueError(f"member cell {member!r} is in two published regions")
            owner[member] = i
    memberships = at8 = at7 = suppressed = 0
    area = 0.0
    everyone: set = set()
    for cell, users in users_by_cell.items():
        n = len(users)
        if not n:
            continue
        everyone.update(users)
        memberships += n
        res = h3.get_resolution(cell)
        hits = [owner[a] for a in (h3.cell_to_parent(cell, r) for r in range(res + 1)) if a in owner]
        if len(hits) > 1:
            raise ValueError(f"base cell {cell!r} is covered by {len(hits)} published regions")
        if not hits:
            suppressed += n
            continue
        region = regions[hits[0]]
        at8 += n if region.resolution >= 8 else 0
        at7 += n if region.resolution >= 7 else 0
        area += n * areas[hits[0]]
    published = memberships - suppressed
    return MapUtility(
        regions=len(regions), users=len(everyone), memberships=memberships,
        at_res8=at8 / memberships if memberships else 0.0, at_res7=at7 / memberships if memberships else 0.0,
        suppressed=suppressed / memberships if memberships else 0.0,
        mean_km2=area / published if published else 0.0)
