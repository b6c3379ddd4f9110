"""A small Mondrian-style baseline (not the pipeline's rule): k-anonymous boxes over one window's base cells.

LeFevre et al.'s Mondrian, on the window's non-empty base cells (their centres as points, each
with its set of users): a group is cut at the median of its wider side (metres), as long as both
halves keep >= k distinct users; each group that cannot be cut is published as its tight
bounding box (the box of its cells' outlines) with its distinct-user count. Its boxes follow the
data, not a fixed grid, so their edges tell where users were at finer than H3 precision: a
partner gets more detail than the count alone says, and the differencing argument of
``anonymizers.regions`` does not carry over as it is (boxes of different windows never line up).
It is here to measure how far the H3 rule is from a data-driven partition at the same k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import h3

M_PER_DEG = 111_320.0


@dataclass(frozen=True)
class MondrianBox:
    """One published group: its base cells, its box's area and the H3 resolution of that size."""

    members: tuple[str, ...]
    users: int
    area_km2: float

    @property
    def resolution(self) -> int:
        """The finest H3 resolution whose average cell is at least as large as the box."""
        return max((r for r in range(16) if h3.average_hexagon_area(r, unit="km^2") >= self.area_km2), default=0)


def mondrian_boxes(users_by_cell: Mapping[str, set | frozenset], k: int) -> list[MondrianBox]:
    """Partition the window's non-empty cells into boxes of >= k distinct users (median cuts)."""
    cells = [(c, h3.cell_to_latlng(c), frozenset(u)) for c, u in users_by_cell.items() if u]
    if len(frozenset().union(*(u for _, _, u in cells))) < k if cells else True:
        return []
    out: list[MondrianBox] = []
    stack = [cells]
    while stack:
        group = stack.pop()
        halves = _cut(group, k)
        if halves:
            stack.extend(halves)
        else:
            out.append(_box(group))
    return sorted(out, key=lambda b: b.members)


def _cut(group, k):
    """The two halves of a median cut along the wider side, or None if either would fall below k."""
    lats = [p[0] for _, p, _ in group]
    lngs = [p[1] for _, p, _ in group]
    scale = math.cos(math.radians(sum(lats) / len(lats)))
    by_lat = max(lats) - min(lats) >= (max(lngs) - min(lngs)) * scale
    for axis in ((0, 1) if by_lat else (1, 0)):  # the wider side first, then the other
        ordered = sorted(group, key=lambda item: (item[1][axis], item[0]))
        mid = len(ordered) // 2
        left, right = ordered[:mid], ordered[mid:]
        if left and right and all(len(frozenset().union(*(u for _, _, u in half))) >= k for half in (left, right)):
            return left, right
    return None


def _box(group) -> MondrianBox:
    points = [v for c, _, _ in group for v in h3.cell_to_boundary(c)]
    lat0, lat1 = min(p[0] for p in points), max(p[0] for p in points)
    lng0, lng1 = min(p[1] for p in points), max(p[1] for p in points)
    width = (lng1 - lng0) * M_PER_DEG * math.cos(math.radians((lat0 + lat1) / 2))
    area = (lat1 - lat0) * M_PER_DEG * width / 1e6
    users = frozenset().union(*(u for _, _, u in group))
    return MondrianBox(tuple(sorted(c for c, _, _ in group)), len(users), area)
