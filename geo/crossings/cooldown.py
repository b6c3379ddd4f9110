"""Each pair's current record over crossings repartitioned by pair_key: PairCooldown.

The rule is model.supersedes': per pair, the current record is its latest cooldown period's
earliest crossing. Offered in any order, the same crossings leave the same current record; each
offer that changes it is a record to publish (the first of a period, or a correction to an
earlier crossing of that period). The batch search applies the same rule to a whole frame.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from geo.crossings.model import Crossing, CrossingParams, cooldown_period, slice_end, supersedes

Current = tuple[float, "float | None", "str | None", "str | None"]  # (ts, distance_m, place, band) of a pair's record
Group = tuple[str, int, int, float]  # (partition key, slice lo, slice hi, cooldown period): see crowd.GroupBests
Entry = list  # [ts, distance_m, place, band, source]: a group's best crossing, from detector partition `source`


class Outcome(NamedTuple):
    """What an offer_group or withdraw_unit did: whether the pair's groups changed (to be saved),
    whether its record changed (to be published), and the record (None: the pair has none)."""

    touched: bool
    changed: bool
    record: "Current | None"


def _order(entry) -> tuple:
    """model.supersedes' order (ts, distance, place, band) as a sort key; unknown values first."""
    ts, d, place, band = entry[:4]
    return (ts, -math.inf if d is None else d, place or "", band or "")


class PairCooldown:
    """Each pair's current record (its latest period's earliest crossing), from crossings offered in any order.

    It also remembers who was reported with whom, so that a withdrawal can be retracted on every
    partner's side. That memory is itself personal data (who met whom), so it is kept no longer
    than the reports it serves: when offers carry `reported_at` (a wall clock, seconds),
    `forget_reported_before` drops the pairs whose last report is older, i.e. whose crossing
    records the `crossings` topic no longer holds.
    """

    _HOUR = 3600.0  # reported_at is tracked per hour: forgetting is up to an hour late, never early
    _EXPIRY_S = 60.0

    def __init__(self, params: CrossingParams = CrossingParams()):
        self.params = params
        self._last: dict[tuple[str, str], Current] = {}
        # user -> {partner: None}: dicts of strings stay untracked by Python's cycle collector, sets
        # would not (with millions of users, every full collection walked them: 100-270 ms pauses).
        self._partners: dict[str, dict[str, None]] = {}
        self._hour_of: dict[tuple[str, str], int] = {}  # pair -> hour of its last report (wall clock)
        self._by_hour: dict[int, list[tuple[str, str]]] = {}  # hour -> pairs reported in it (maybe since again)
        # The pair stage's form (offer_group): each pair's groups (crossings the crowd rule withdraws
        # together), and each detector partition's watermark (which groups are final).
        self._groups: dict[tuple[str, str], dict[Group, Entry]] = {}
        self._settled: dict[object, float] = {}
        # Pairs by the _EXPIRY_S slice of their record's time, so that expire() visits only old ones;
        # made by the first expire() (the pair stage never calls it), then kept up with every record.
        self._expiry: dict[int, list[tuple[str, str]]] | None = None

    def offer(self, crossing: Crossing) -> bool:
        """Whether this crossing replaces its pair's current record (and, if so, remember it)."""
        return self.offer_pair(crossing.user_a, crossing.user_b, crossing.ts, crossing.distance_m, crossing.place,
                               crossing.distance_band)

    def offer_pair(self, user_a: str, user_b: str, ts: float, distance_m: float | None = None,
                   place: str | None = None, band: str | None = None, reported_at: float | None = None) -> bool:
        """offer() for the crossing of user_a < user_b at ts, without building it.

        distance_m/place/band None: not known (the detector's pre-filter knows no place); such an
        offer wins a tie on what is known (model.supersedes).
        `reported_at`: when a reported crossing is published (wall clock), for `forget_reported_before`.
        """
        pair = (user_a, user_b)
        last = self._last.get(pair)
        if last is not None and not supersedes(ts, distance_m, place, band, last, self.params.cooldown_s):
            return False
        self._last[pair] = (ts, distance_m, None if place is None else sys.intern(place),
                            None if band is None else sys.intern(band))
        if self._expiry is not None:
            self._expire_at(pair, ts)
        if reported_at is not None:
            self._mark(pair, reported_at)
        if last is None:
            self._link(user_a, user_b)
        return True

    # ----------------------------------------------------------------- the pair stage's form

    def offer_group(self, user_a: str, user_b: str, key: str, lo: int, hi: int, ts: float,
                    distance_m: float | None, place: str | None, band: str | None, source: object = None,
                    reported_at: float | None = None) -> Outcome:
        """A detector's best crossing so far in group (key, lo, hi) of pair user_a < user_b.

        The pair's record is then the best crossing (model.supersedes' order) of its latest period
        over the groups not withdrawn. Offered in any order, with withdrawals applied in their
        detector's order, the same groups leave the same record.
        """
        pair = (user_a, user_b)
        groups = self._groups.get(pair)
        if groups is None:
            groups = self._groups[pair] = {}
        g = (key, lo, hi, cooldown_period(ts, self.params.cooldown_s))
        entry = [ts, distance_m, None if place is None else sys.intern(place), None if band is None else sys.intern(band),
                 source]
        old = groups.get(g)
        if old is not None and _order(entry) >= _order(old):
            return Outcome(False, False, self._last.get(pair))
        groups[g] = entry
        return Outcome(True, *self._refresh(pair, reported_at))

    def withdraw_unit(self, user_a: str, user_b: str, key: str, s: int, reported_at: float | None = None) -> Outcome:
        """Unit (key, s) became a crowd: the pair's groups in it are withdrawn."""
        pair = (user_a, user_b)
        groups = self._groups.get(pair)
        gone = [g for g in groups if g[0] == key and s in (g[1], g[2])] if groups else []
        if not gone:
            return Outcome(False, False, self._last.get(pair))
        for g in gone:
            del groups[g]
        return Outcome(True, *self._refresh(pair, reported_at))

    def settle(self, source: object, watermark: float) -> None:
        """Detector partition `source` has reached `watermark`: its groups of slices ended by then are final."""
        if watermark > self._settled.get(source, -math.inf):
            self._settled[source] = watermark

    def reported_at(self, user_a: str, user_b: str) -> float | None:
        """The start of the hour the pair's record was last reported in (wall clock), None if not known."""
        hour = self._hour_of.get((user_a, user_b))
        return None if hour is None else hour * self._HOUR

    def groups_of(self, user_a: str, user_b: str) -> dict[Group, Entry]:
        return dict(self._groups.get((user_a, user_b), {}))

    def _refresh(self, pair: tuple[str, str], reported_at: float | None) -> tuple[bool, Current | None]:
        """Prune the pair's groups that can no longer matter, recompute its record; (changed, record)."""
        groups = self._groups.get(pair)
        if groups:
            self._prune(groups)
        old = self._last.get(pair)
        if not groups:
            self._groups.pop(pair, None)
            if old is None:
                return False, None
            self._drop(pair)
            return True, None
        latest = max(g[3] for g in groups)
        best = min((e for g, e in groups.items() if g[3] == latest), key=_order)
        record: Current = (best[0], best[1], best[2], best[3])
        if old == record:
            return False, old
        self._last[pair] = record
        if self._expiry is not None:
            self._expire_at(pair, record[0])
        if reported_at is not None:
            self._mark(pair, reported_at)
        if old is None:
            self._link(*pair)
        return True, record

    def _prune(self, groups: dict[Group, Entry]) -> None:
        """Drop groups that can never be the record: older than a final group's period, or worse than it."""
        settled, params = self._settled, self.params
        final = [(g, e) for g, e in groups.items()
                 if settled.get(e[4], -math.inf) >= slice_end(g[2], params)]
        if not final:
            return
        period = max(g[3] for g, _ in final)
        floor = min((e for g, e in final if g[3] == period), key=_order)
        for g in [g for g, e in groups.items() if g[3] < period or (g[3] == period and _order(e) > _order(floor))]:
            del groups[g]

    def _link(self, user_a: str, user_b: str) -> None:
        partners = self._partners
        for user, other in ((user_a, user_b), (user_b, user_a)):
            known = partners.get(user)
            if known is None:
                partners[user] = {other: None}
            else:
                known[other] = None

    def current(self, user_a: str, user_b: str) -> Current | None:
        """The pair's current record (ts, distance_m, place, band), None if it has none."""
        return self._last.get((user_a, user_b))

    def last_reported(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The time of each pair's current record (user_a < user_b): epoch seconds, -inf if none (or forgotten)."""
        last, never = self._last, (-math.inf,)
        return np.asarray([last.get(pair, never)[0] for pair in pairs], dtype=np.float64)

    def current_many(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """The (ts, distance_m) of each pair's current record (user_a < user_b): nan where it has none, or
        where the distance is not known."""
        last, none = self._last, (math.nan, math.nan)
        rows = np.asarray([last.get(pair, none)[:2] for pair in pairs], dtype=np.float64).reshape(-1, 2)
        return rows[:, 0], rows[:, 1]

    def _mark(self, pair: tuple[str, str], reported_at: float) -> None:
        hour = int(reported_at // self._HOUR)
        if self._hour_of.get(pair) != hour:
            self._hour_of[pair] = hour
            bucket = self._by_hour.get(hour)
            if bucket is None:
                self._by_hour[hour] = [pair]
            else:
                bucket.append(pair)

    def forget_reported_before(self, before: float) -> list[tuple[str, str]]:
        """Forget every pair last reported (`reported_at`) before the hour of `before`; returns them.

        A forgotten pair's next crossing is reported again, and a withdrawal no longer lists it.
        Pairs offered without `reported_at` are not affected.
        """
        cutoff = int(before // self._HOUR)
        forgotten = []
        for hour in sorted(h for h in self._by_hour if h < cutoff):
            for pair in self._by_hour.pop(hour):
                if self._hour_of.get(pair) == hour:  # not reported again since
                    self._drop(pair)
                    forgotten.append(pair)
        return forgotten

    def _drop(self, pair: tuple[str, str]) -> None:
        del self._last[pair]
        self._groups.pop(pair, None)
        self._hour_of.pop(pair, None)
        a, b = pair
        for u, v in ((a, b), (b, a)):
            partners = self._partners.get(u)
            if partners is not None:
                partners.pop(v, None)
                if not partners:
                    del self._partners[u]

    def partners_of(self, user_id: str) -> frozenset[str]:
        """Users this user has reported crossings with, still held in state (for audits)."""
        return frozenset(self._partners.get(user_id, ()))

    def purge_user(self, user_id: str) -> list[str]:
        """Forget a user; returns the partners it had reported crossings with (sorted), for their tombstones."""
        partners = sorted(self._partners.pop(user_id, ()))
        for other in partners:
            pair = (user_id, other) if user_id < other else (other, user_id)
            self._last.pop(pair, None)
            self._groups.pop(pair, None)
            self._hour_of.pop(pair, None)
            others = self._partners.get(other)
            if others is not None:
                others.pop(user_id, None)
                if not others:
                    del self._partners[other]
        return partners

    def expire(self, before: float) -> int:
        """Forget pairs whose current record is older than `before` (their next crossing is offered as new)."""
        if self._expiry is None:
            self._expiry = {}
            for pair, current in self._last.items():
                self._expire_at(pair, current[0])
        # A record older than `before` is listed under its slice, at or before the slice of `before`;
        # a pair may be listed again under later slices (its record changed), or be gone.
        edge = math.floor(before / self._EXPIRY_S) if math.isfinite(before) else before
        last, removed = self._last, 0
        for b in sorted(b for b in self._expiry if b <= edge):
            pairs = self._expiry.pop(b)
            kept = [pair for pair in pairs if pair in last and not last[pair][0] < before]
            for pair in pairs:
                current = last.get(pair)
                if current is not None and current[0] < before:
                    self._drop(pair)
                    removed += 1
            if kept and b == edge:
                self._expiry[b] = kept
        return removed

    def _expire_at(self, pair: tuple[str, str], ts: float) -> None:
        b = math.floor(ts / self._EXPIRY_S) if math.isfinite(ts) else ts
        listed = self._expiry.get(b)
        if listed is None:
            self._expiry[b] = [pair]
        else:
            listed.append(pair)

    def snapshot(self) -> dict:
        """JSON-ready state: [user_a, user_b, ts, distance_m, place, band, reported_at, groups] per pair
        (None: unknown; groups: group_entries())."""
        hour_of = self._hour_of
        return {"last": [[a, b, t, d, place, band, hour_of[(a, b)] * self._HOUR if (a, b) in hour_of else None,
                          self.group_entries(a, b)]
                         for (a, b), (t, d, place, band) in sorted(self._last.items())]}

    def group_entries(self, user_a: str, user_b: str) -> list[list]:
        """The pair's groups as JSON-ready rows [key, lo, hi, period, ts, distance_m, place, band, source]."""
        return [[*g, *e] for g, e in sorted(self._groups.get((user_a, user_b), {}).items(), key=lambda ge: ge[0])]

    @classmethod
    def restore(cls, snapshot: dict, params: CrossingParams = CrossingParams()) -> "PairCooldown":
        """A PairCooldown from a snapshot() (entries [a, b, ts, distance_m, place, band, reported_at[, groups]])."""
        self = cls(params)
        for row in snapshot.get("last", []):
            a, b, t, d, place, band, reported_at = row[:7]
            if not a < b:
                raise ValueError(f"snapshot pair ({a!r}, {b!r}) is not sorted")
            self._last[(a, b)] = (float(t), None if d is None else float(d), place, band)
            if len(row) > 7 and row[7]:
                self._groups[(a, b)] = {(k, int(lo), int(hi), float(period)): [float(gt), gd, gp, gb, src]
                                        for k, lo, hi, period, gt, gd, gp, gb, src in row[7]}
            self._partners.setdefault(a, {})[b] = None
            self._partners.setdefault(b, {})[a] = None
            if reported_at is not None:
                self._mark((a, b), float(reported_at))
        return self

    def __len__(self) -> int:
        return len(self._last)

    def users(self) -> int:
        """Users with at least one remembered partner."""
        return len(self._partners)
