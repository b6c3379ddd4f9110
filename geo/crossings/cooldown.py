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

import numpy as np

from geo.crossings.model import Crossing, CrossingParams, supersedes

Current = tuple[float, "float | None", "str | None", "str | None"]  # (ts, distance_m, place, band) of a pair's record


class PairCooldown:
    """Each pair's current record (its latest period's earliest crossing), from crossings offered in any order.

    It also remembers who was reported with whom, so that a withdrawal can be retracted on every
    partner's side. That memory is itself personal data (who met whom), so it is kept no longer
    than the reports it serves: when offers carry `reported_at` (a wall clock, seconds),
    `forget_reported_before` drops the pairs whose last report is older, i.e. whose crossing
    records the `crossings` topic no longer holds.
    """

    _HOUR = 3600.0  # reported_at is tracked per hour: forgetting is up to an hour late, never early

    def __init__(self, params: CrossingParams = CrossingParams()):
        self.params = params
        self._last: dict[tuple[str, str], Current] = {}
        # user -> {partner: None}: dicts of strings stay untracked by Python's cycle collector, sets
        # would not (with millions of users, every full collection walked them: 100-270 ms pauses).
        self._partners: dict[str, dict[str, None]] = {}
        self._hour_of: dict[tuple[str, str], int] = {}  # pair -> hour of its last report (wall clock)
        self._by_hour: dict[int, list[tuple[str, str]]] = {}  # hour -> pairs reported in it (maybe since again)

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
        if reported_at is not None:
            self._mark(pair, reported_at)
        if last is None:
            partners = self._partners
            for user, other in ((user_a, user_b), (user_b, user_a)):
                known = partners.get(user)
                if known is None:
                    partners[user] = {other: None}
                else:
                    known[other] = None
        return True

    def current(self, user_a: str, user_b: str) -> Current | None:
        """The pair's current record (ts, distance_m, place, band), None if it has none."""
        return self._last.get((user_a, user_b))

    def last_reported(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The time of each pair's current record (user_a < user_b): epoch seconds, -inf if none (or forgotten)."""
        last, never = self._last, (-math.inf,)
        return np.asarray([last.get(pair, never)[0] for pair in pairs], dtype=np.float64)

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
            self._hour_of.pop(pair, None)
            others = self._partners.get(other)
            if others is not None:
                others.pop(user_id, None)
                if not others:
                    del self._partners[other]
        return partners

    def expire(self, before: float) -> int:
        """Forget pairs whose current record is older than `before` (their next crossing is offered as new)."""
        old = [pair for pair, current in self._last.items() if current[0] < before]
        for pair in old:
            self._drop(pair)
        return len(old)

    def snapshot(self) -> dict:
        """JSON-ready state: [user_a, user_b, ts, distance_m, place, band, reported_at] per pair (None: unknown)."""
        hour_of = self._hour_of
        return {"last": [[a, b, t, d, place, band, hour_of[(a, b)] * self._HOUR if (a, b) in hour_of else None]
                         for (a, b), (t, d, place, band) in sorted(self._last.items())]}

    @classmethod
    def restore(cls, snapshot: dict, params: CrossingParams = CrossingParams()) -> "PairCooldown":
        """A PairCooldown from a snapshot() (entries [a, b, ts, distance_m, place, band, reported_at])."""
        self = cls(params)
        for a, b, t, d, place, band, reported_at in snapshot.get("last", []):
            if not a < b:
                raise ValueError(f"snapshot pair ({a!r}, {b!r}) is not sorted")
            self._last[(a, b)] = (float(t), None if d is None else float(d), place, band)
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
