"""The differential-privacy contribution bound, applied once per user where their pings are read in order.

With CROSSPATHS_DP_EPSILON set, the ingest stage asks `contribution.admit` before it sends a
partner-sharing ping to the statistics stage: the ping counts only in one of the user's first m
cells of its window (anonymizers.dp.admit_cell; m = CROSSPATHS_DP_MAX_CELLS_PER_USER, cells at
CROSSPATHS_DP_RESOLUTION, inside the declared area when there is one). A user's pings all arrive
on one geo-pings partition, in their producer's order, so this is one bound over every statistics
partition: a user changes at most m counts of a window, whatever the partition count (bounding in
each statistics partition instead cost a factor of the partitions a user reaches).

State: the `dp-bound` table, "p|window start|pseudonym" -> the cells counted so far (at most m),
written at the user's geo-pings partition p. The key holds the window's pseudonym, never the user
id. A partition's entries are dropped once its event time is a window past the statistics
lateness (`expire`); the partition then ignores pings of those windows ("p|horizon"), so a user
forgotten here can never be counted in m more cells of a window. `forget` drops a user's entries
on erasure or partner-sharing withdrawal.
"""
from __future__ import annotations

import math

import h3

from anonymizers.dp import admit_cell
from anonymizers.windows import window_start
from streams.app import app, dp_bound_table
from streams.plumbing.tables import delete_at, peek, write_at
from streams.rules import Rules

SEP = "|"


class ContributionBound:
    """Which partner-sharing pings count, under the DP contribution bound, for the partitions read here."""

    def __init__(self, table) -> None:
        self.table = table
        self._horizons: dict[int, float] = {}  # partition -> windows before it are closed here

    def admit(self, r: Rules, p: int, home: bool, ws: float, member: str, base_cell: str) -> bool:
        """Whether a ping of input partition p, by the user with window pseudonym `member`, in `base_cell`, counts.

        `home`: the ping is keyed and on its key's partition, where all the user's keyed pings are. One
        sent without a key (or to another partition) could escape the bound: it counts in no statistics.
        """
        if not home:
            return False
        if ws < self.horizon(p):
            return False  # its window is past here: the user's cells there are no longer known
        dp = r.dp
        cell = base_cell if h3.get_resolution(base_cell) <= dp.resolution else h3.cell_to_parent(base_cell, dp.resolution)
        if r.dp_area is not None and cell not in r.dp_area.cells:
            return False  # never published: outside the area, it takes none of the user's m cells
        key = f"{p}{SEP}{ws:.0f}{SEP}{member}"
        kept = tuple(peek(self.table, key) or ())
        now = admit_cell(kept, cell, dp.max_cells_per_user)
        if now is None:
            return False
        if now is not kept:
            write_at(self.table, p, key, list(now))
        return True

    def horizon(self, p: int) -> float:
        """Partition p's first window still open here (-inf: all)."""
        found = self._horizons.get(p)
        if found is None:
            saved = peek(self.table, f"{p}{SEP}horizon")
            found = self._horizons[p] = -math.inf if saved is None else float(saved)
        return found

    def expire(self, r: Rules, p: int, progress: float) -> int:
        """Partition p has reached event time `progress`: drop the entries of windows no ping can count in.

        A window ws is dropped when progress passes its end plus the statistics lateness plus one more
        window (the statistics stage has closed it, or will refuse its pings as late). Returns the
        entries dropped.
        """
        if not math.isfinite(progress):
            return 0
        size = r.stats_window_s
        new = window_start(progress - r.stats_lateness_s - size, size)
        if new <= self.horizon(p):
            return 0
        self._horizons[p] = new
        write_at(self.table, p, f"{p}{SEP}horizon", new)
        prefix, dropped = f"{p}{SEP}", 0
        for key in [k for k in self.table.data.keys() if k.startswith(prefix)]:
            ws = key.split(SEP, 2)[1]
            if ws != "horizon" and float(ws) < new:
                delete_at(self.table, p, key)
                dropped += 1
        return dropped

    def forget(self, p: int, members: set[str]) -> int:
        """Drop the entries of these window pseudonyms (one user's) in partition p; returns how many."""
        prefix = f"{p}{SEP}"
        keys = [k for k in self.table.data.keys() if k.startswith(prefix) and k.split(SEP, 2)[-1] in members]
        for key in keys:
            delete_at(self.table, p, key)
        return len(keys)

    def reassign(self) -> None:
        """Partitions moved: horizons are read again from the table when next used."""
        self._horizons.clear()


contribution = ContributionBound(dp_bound_table)


@app.on_partitions_revoked.connect
async def forget_horizons(app, revoked, **kwargs) -> None:
    """A partition may come back with a horizon moved elsewhere: read it from the table again."""
    contribution.reassign()
