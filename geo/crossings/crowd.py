"""The crowd rule: where many people share a place at once, they are counted, not matched pair by pair.

Definition (held by geo.oracle's brute force, the batch search and the streaming detector alike):
- Time is cut into slices of `slice_s(params)` = window_s (at least 1 s), aligned on the epoch:
  `crowd_slice(ts) = floor(ts / slice_s)`.
- A *unit* (K, s) is a partition key K of routing.route() and a slice s. Its people are the distinct
  users with a usable ping outside every sensitive zone that route() sends to K (as its home key or
  as a guest) with a time in s: the ~1 km cell K and the strip of distance_m around it on the sides
  of its smaller neighbours.
- A unit is a *crowd* when it has more than `crowd_users` people (0: never).
- A matching ping pair (p, q) is judged at E, the greater of the two pings' home keys (where the
  stream finds it). It is a *crowd pair* when (E, slice(p)) or (E, slice(q)) is a crowd; a crowd
  pair is never a crossing. Everything else (the cooldown, places, zones, consent) applies to the
  other pairs exactly as without the rule, so where no unit is a crowd, nothing changes.

Why this form (docs/DECISIONS.md): every input of the decision about a pair is at the one detector
key that finds the pair, so the stream needs no message between partitions to apply it, and the
work per ping in a crowd is a counter update, not a match against everyone there.

The stream answers before a unit is complete: a crossing found while its unit had `crowd_users`
people or fewer is sent at once and withdrawn when the unit becomes a crowd (its key's pair
groups in `GroupBests`, the pair stage's in cooldown.PairCooldown.offer_group).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from geo.crossings.cooldown import PairCooldown
from geo.crossings.model import Crossing, CrossingParams, cooldown_period, crowd_slice, slice_end, slice_s, supersedes  # noqa: F401 (re-exported)

Unit = tuple[str, int]  # (partition key, slice)
_EXPIRE_EVERY_S = 60.0  # event time between two scans of the closed pre-filter for pairs a period old
GroupKey = tuple[str, str, str, int, int, float]  # (user_a, user_b, key, slice lo, slice hi, cooldown period)


def crowded_units(keys: Sequence[str], slices: Sequence[int], users: Sequence[str], limit: int) -> set[Unit]:
    """The crowds among units given by one row per routed ping (key, slice, user): more than `limit` people."""
    if limit <= 0:
        return set()
    people: dict[Unit, set[str]] = {}
    for unit in zip(keys, slices, users):
        people.setdefault(unit[:2], set()).add(unit[2])
    return {unit for unit, who in people.items() if len(who) > limit}


class CrowdCounts:
    """The people of each live unit of a detector, and which units are crowds.

    A unit is counted until it becomes a crowd, then only marked (no one needs its people any
    more): memory per unit is at most crowd_users + 1 names. Units are dropped once their slice is
    over for the watermark (no ping of it can come in time any more).
    """

    def __init__(self, params: CrossingParams = CrossingParams()):
        self.params = params
        self.limit = params.crowd_users
        self._people: dict[Unit, dict[str, None]] = {}
        self._crowds: set[Unit] = set()
        self._erased = 0
        self._recent: dict[str, int] = {}  # key -> its latest slice that was a crowd

    def note(self, keys: Sequence[str], slices: Sequence[int], users: Sequence[str]) -> list[Unit]:
        """Count routed pings (key, slice, user); returns the units that became crowds, in order."""
        if self.limit <= 0:
            return []
        became: list[Unit] = []
        people, crowds, limit = self._people, self._crowds, self.limit
        for key, s, user in zip(keys, slices, users):
            unit = (key, s)
            if unit in crowds:
                continue
            who = people.get(unit)
            if who is None:
                who = people[unit] = {}
            who[user] = None
            if len(who) > limit:
                del people[unit]
                crowds.add(unit)
                became.append(unit)
                if s > self._recent.get(key, s - 1):
                    self._recent[key] = s
        return became

    def is_crowd(self, key: str, s: int) -> bool:
        return (key, s) in self._crowds

    def suspect(self, key: str, s: int) -> bool:
        """Whether the key was a crowd in slice s - 1 (or later): a crowd goes on, so its next slice's
        crossings are held back until that slice is decided (GroupBests.hold) rather than sent and withdrawn."""
        return self._recent.get(key, s - 2) >= s - 1

    def recent(self) -> int:
        """How many keys were a crowd lately (suspect() is False at every other key)."""
        return len(self._recent)

    def crowds(self) -> set[Unit]:
        """The live units that are crowds."""
        return set(self._crowds)

    def expire(self, watermark: float) -> int:
        """Forget units whose slice ended at or before `watermark`; returns how many."""
        end = self.params
        old = [u for u in self._people if slice_end(u[1], end) <= watermark]
        old_crowds = [u for u in self._crowds if slice_end(u[1], end) <= watermark]
        for u in old:
            del self._people[u]
        self._crowds.difference_update(old_crowds)
        for key in [k for k, s in self._recent.items() if slice_end(s + 1, end) <= watermark]:
            del self._recent[key]
        return len(old) + len(old_crowds)

    def forget_user(self, user_id: str) -> None:
        """Erasure: the user's id leaves every count, replaced by a token that is no one's id, so that
        the unit's count (what the decision about other people's pairs rests on) does not change."""
        for who in self._people.values():
            if user_id in who:
                del who[user_id]
                self._erased += 1
                who[f"\x00erased-{self._erased}"] = None

    def __len__(self) -> int:
        return len(self._people) + len(self._crowds)

    def memory_bytes(self) -> int:
        return 232 * len(self) + 72 * sum(len(w) for w in self._people.values())


class _PairTimes:
    """A copy of a PairCooldown's (ts, distance) per pair in sorted arrays, to read many pairs at once.

    Its owner keeps it equal to the PairCooldown: `mark` each pair whose record may have changed
    (read back at the next `sync`), `forget_before` at each expire, `forget_user` at each purge.
    Pairs are keyed by two user codes of its own (`codes`), packed in one int64.
    """

    _MIN_USERS = 4096

    def __init__(self) -> None:
        self._uid: dict[str, int] = {}
        self.code = np.empty(0, dtype=np.int64)  # sorted: (smaller user code << 32) | larger
        self.ts = np.empty(0, dtype=np.float64)  # nan: the pair has no record (a hole, until compacted)
        self.d = np.empty(0, dtype=np.float64)
        self._dirty: dict[tuple[str, str], None] = {}

    def codes(self, users: Sequence[str]) -> np.ndarray:
        uid = self._uid
        return np.fromiter((uid[u] if u in uid else uid.setdefault(u, len(uid)) for u in users), dtype=np.int64,
                           count=len(users))

    @staticmethod
    def _pack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (np.minimum(a, b) << 32) | np.maximum(a, b)

    def mark(self, user_a: str, user_b: str) -> None:
        self._dirty[(user_a, user_b)] = None

    def sync(self, records: PairCooldown) -> None:
        """Read the marked pairs' records again."""
        if not self._dirty:
            return
        pairs = list(self._dirty)
        self._dirty.clear()
        ts, d = records.current_many(pairs)
        code = self._pack(self.codes([a for a, _ in pairs]), self.codes([b for _, b in pairs]))
        by = np.argsort(code)
        code, ts, d = code[by], ts[by], d[by]
        pos = np.searchsorted(self.code, code)
        found = pos < self.code.size
        found[found] = self.code[pos[found]] == code[found]
        self.ts[pos[found]], self.d[pos[found]] = ts[found], d[found]
        new = ~found & ~np.isnan(ts)
        if new.any():
            at = pos[new]
            self.code = np.insert(self.code, at, code[new])
            self.ts = np.insert(self.ts, at, ts[new])
            self.d = np.insert(self.d, at, d[new])

    def lookup(self, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ts, distance) of the pairs of these packed codes, nan where none."""
        if not self.code.size:
            return np.full(code.size, np.nan), np.full(code.size, np.nan)
        pos = np.minimum(np.searchsorted(self.code, code), self.code.size - 1)
        found = self.code[pos] == code
        return np.where(found, self.ts[pos], np.nan), np.where(found, self.d[pos], np.nan)

    def forget_before(self, before: float) -> None:
        """PairCooldown.expire(before): records older than `before` are gone."""
        old = self.ts < before
        self.ts[old] = self.d[old] = np.nan
        self._compact()

    def forget_user(self, user_id: str) -> None:
        """PairCooldown.purge_user: the user's pairs are gone."""
        c = self._uid.get(user_id)
        if c is not None:
            gone = ((self.code >> 32) == c) | ((self.code & 0xFFFFFFFF) == c)
            self.ts[gone] = self.d[gone] = np.nan

    def _compact(self) -> None:
        """Drop holes once they are half the arrays, and renumber users once most codes are unused."""
        live = ~np.isnan(self.ts)
        if 2 * int(live.sum()) < self.code.size:
            self.code, self.ts, self.d = self.code[live], self.ts[live], self.d[live]
        if len(self._uid) <= max(self._MIN_USERS, 4 * self.code.size) and len(self._uid) < 1 << 30:
            return
        a, b = self.code >> 32, self.code & 0xFFFFFFFF
        used = np.unique(np.concatenate([a, b]))
        names = np.empty(len(self._uid), dtype=object)
        names[list(self._uid.values())] = list(self._uid)
        self._uid = {u: i for i, u in enumerate(names[used].tolist())}
        self.code = self._pack(np.searchsorted(used, a), np.searchsorted(used, b))
        by = np.argsort(self.code)
        self.code, self.ts, self.d = self.code[by], self.ts[by], self.d[by]


class GroupBests:
    """A detector partition's pre-filter: per pair *group* the best crossing sent so far.

    A group is (pair, key, slice of one ping, slice of the other, cooldown period): the crossings
    the crowd rule withdraws together. A crossing is sent when it is better (model.supersedes'
    order on time and distance) than its group's best so far, and not worse than a *closed* group of
    its pair and period (one whose slices are over: nothing can withdraw it any more, so nothing
    worse can become the pair's record). When a unit becomes a crowd, `withdraw_unit` drops its
    groups and lists (user_a, user_b, key, slice) in `withdrawn`, for the pair stage.
    """

    def __init__(self, params: CrossingParams = CrossingParams()):
        self.params = params
        self._best: dict[GroupKey, tuple[float, float]] = {}
        self._by_unit: dict[Unit, list[GroupKey]] = {}
        self._by_end: dict[int, list[GroupKey]] = {}  # hi slice -> groups (to close them)
        self.closed = PairCooldown(params)  # changed only here, so that _closed_times stays its copy
        self._closed_times = _PairTimes()
        self.withdrawn: list[tuple[str, str, str, int]] = []
        self._expired_at = -math.inf
        self._held: dict[int, list[Crossing]] = {}  # hi slice -> crossings held back (hold)
        self._sent: set[GroupKey] = set()  # groups with a crossing sent (not only held): a withdrawal concerns them
        self.released: list[Crossing] = []

    def offer(self, user_a: str, user_b: str, key: str, lo: int, hi: int, ts: float, distance_m: float) -> bool:
        """Whether the crossing of user_a < user_b at (ts, distance) in group (key, lo, hi) goes on (and remember it)."""
        cooldown_s = self.params.cooldown_s
        if self.params.crowd_users <= 0:  # no crowd rule: nothing is ever withdrawn, every group is as good as closed
            if self.closed.offer_pair(user_a, user_b, ts, distance_m):
                self._closed_times.mark(user_a, user_b)
                return True
            return False
        closed = self.closed.current(user_a, user_b)
        if closed is not None and not supersedes(ts, distance_m, None, None, closed, cooldown_s):
            return False
        period = cooldown_period(ts, cooldown_s)
        gk = (user_a, user_b, key, lo, hi, period)
        if lo != hi:  # a group within one of its slices is withdrawn whenever this one is: if it is better, this never counts
            for inner in ((user_a, user_b, key, lo, lo, period), (user_a, user_b, key, hi, hi, period)):
                known = self._best.get(inner)
                if known is not None and known <= (ts, distance_m):
                    return known == (ts, distance_m)
        best = self._best.get(gk)
        if best is None:
            self._by_unit.setdefault((key, lo), []).append(gk)
            if hi != lo:
                self._by_unit.setdefault((key, hi), []).append(gk)
            self._by_end.setdefault(hi, []).append(gk)
        elif (ts, distance_m) > best:
            return False
        elif (ts, distance_m) == best:
            return True  # a tie on time and distance: the place decides, at the pair stage
        self._best[gk] = (ts, distance_m)
        return True

    def offer_many(self, users: Sequence[str], a: np.ndarray, b: np.ndarray, keys: Sequence[str], key_of: np.ndarray,
                   lo: np.ndarray, hi: np.ndarray, ts: np.ndarray, distance_m: np.ndarray) -> np.ndarray:
        """offer() for several crossings in the order given, crossing i being of users[a[i]] < users[b[i]]
        at key keys[key_of[i]]: whether each goes on (the same answers and state as one by one).

        In a dense place most offers repeat a pair that a closed group, or a group, let something
        better through for before. A refused offer changes nothing, so those are told apart first,
        from what is known before the batch (a group's best and a closed record only get better as
        the batch goes on): the closed records in sorted arrays, the groups a dictionary read each;
        only the others go through offer().
        """
        n = len(a)
        ts, d = np.asarray(ts, dtype=np.float64), np.asarray(distance_m, dtype=np.float64)
        a, b, key_of = (np.asarray(v, dtype=np.int64) for v in (a, b, key_of))
        lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
        cooldown_s = self.params.cooldown_s
        period = cooldown_period(ts, cooldown_s)
        # Refused by the pair's closed record (model.supersedes with no place): an older period, or
        # the same period and later in (ts, distance); an unknown distance (nan) refuses nothing on a tie.
        times = self._closed_times
        times.sync(self.closed)
        codes = times.codes(users)
        c_ts, c_d = times.lookup(times._pack(codes[a], codes[b]))
        c_period = cooldown_period(c_ts, cooldown_s)
        refused = (c_period > period) | ((c_period == period) & ((ts > c_ts) | ((ts == c_ts) & (d > c_d))))
        if self.params.crowd_users > 0:
            rest = np.flatnonzero(~refused)
            best_get, none = self._best.get, (math.nan, math.nan)
            rest_a = list(map(users.__getitem__, a[rest].tolist()))
            rest_b = list(map(users.__getitem__, b[rest].tolist()))
            rest_keys = list(map(keys.__getitem__, key_of[rest].tolist()))
            lo_r, hi_r, period_r, t_r, d_r = lo[rest], hi[rest], period[rest].tolist(), ts[rest], d[rest]

            def better_known(slice_lo: list, slice_hi: list, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
                """Whether the group (pair, key, slice_lo, slice_hi, period) of each crossing of `rest`
                (or of rest[among]) has a best strictly better than it, and one equal to it."""
                if among is None:
                    groups = zip(rest_a, rest_b, rest_keys, slice_lo, slice_hi, period_r)
                    t, dd = t_r, d_r
                else:
                    pick = among.tolist()
                    groups = zip([rest_a[i] for i in pick], [rest_b[i] for i in pick], [rest_keys[i] for i in pick],
                                 slice_lo, slice_hi, [period_r[i] for i in pick])
                    t, dd = t_r[among], d_r[among]
                known = np.asarray([best_get(g, none) for g in groups], dtype=np.float64).reshape(-1, 2)
                return ((known[:, 0] < t) | ((known[:, 0] == t) & (known[:, 1] < dd)),
                        (known[:, 0] == t) & (known[:, 1] == dd))

            better, _ = better_known(lo_r.tolist(), hi_r.tolist())
            no = better.copy()  # strictly worse than its group's best
            two = np.flatnonzero(lo_r != hi_r)
            if two.size:
                # A group over two slices first looks at the groups within each of them (offer): one
                # at least as good ends the offer, a tie letting it through. So an inner best strictly
                # better refuses, unless an earlier inner check could tie: with a best equal to this
                # crossing, or another crossing of the batch with the very same (ts, distance).
                by = np.lexsort((d, ts))
                same = (ts[by][1:] == ts[by][:-1]) & (d[by][1:] == d[by][:-1])
                tied = np.zeros(n, dtype=bool)
                tied[by[1:][same]] = tied[by[:-1][same]] = True
                first_better, first_equal = better_known(lo_r[two].tolist(), lo_r[two].tolist(), two)
                second_better, second_equal = better_known(hi_r[two].tolist(), hi_r[two].tolist(), two)
                sure = ~first_equal & ~tied[rest[two]]
                no[two] = first_better | (sure & (second_better | (~second_equal & better[two])))
            refused[rest[no]] = True
        out = np.zeros(n, dtype=bool)
        left = np.flatnonzero(~refused)
        out[left] = [self.offer(users[x], users[y], keys[k], l, h, t, dd) for x, y, k, l, h, t, dd in
                     zip(*(v[left].tolist() for v in (a, b, key_of, lo, hi, ts, d)))]
        return out

    def hold(self, crossing: Crossing) -> None:
        """Keep back a crossing of a unit that may become a crowd again (CrowdCounts.suspect) until its
        slices are over (`close` moves it to `released`); dropped if one of its units becomes a crowd."""
        self._held.setdefault(crossing.group[2], []).append(crossing)

    def mark_sent(self, crossing: Crossing) -> None:
        """A crossing of this group left the partition: if its unit becomes a crowd, the pair stage must hear it."""
        if self.params.crowd_users > 0:
            a, b = crossing.user_a, crossing.user_b
            self._sent.add((a, b, *crossing.group, cooldown_period(crossing.ts, self.params.cooldown_s)))

    def mark_sent_many(self, crossings: Sequence[Crossing]) -> None:
        """mark_sent() for several crossings."""
        if self.params.crowd_users > 0 and crossings:
            periods = cooldown_period(np.asarray([c.ts for c in crossings], dtype=np.float64), self.params.cooldown_s)
            self._sent.update((c.user_a, c.user_b, *c.group, period) for c, period in zip(crossings, periods.tolist()))

    def held(self) -> int:
        return sum(len(v) for v in self._held.values())

    def withdraw_unit(self, key: str, s: int) -> int:
        """Unit (key, s) became a crowd: drop its groups and held crossings; (a, b, key, s) per pair goes to `withdrawn`."""
        for hi in (s, s + 1):  # a held crossing's slices are hi - 1 and hi at most (slices >= the window)
            kept = [c for c in self._held.get(hi, ()) if not (c.group[0] == key and s in c.group[1:])]
            if hi in self._held:
                self._held[hi] = kept
        pairs: dict[tuple[str, str], None] = {}
        for gk in self._by_unit.pop((key, s), ()):
            if self._best.pop(gk, None) is not None and gk in self._sent:  # held only: nothing to withdraw
                pairs[gk[:2]] = None
            self._sent.discard(gk)
        self.withdrawn.extend((a, b, key, s) for a, b in pairs)
        return len(pairs)

    def close(self, watermark: float) -> int:
        """Groups whose slices ended at or before `watermark` are final: their best goes to `closed`."""
        closed = 0
        for hi in [h for h in self._held if slice_end(h, self.params) <= watermark]:
            self.released.extend(self._held.pop(hi))
        for hi in [h for h in self._by_end if slice_end(h, self.params) <= watermark]:
            for gk in self._by_end.pop(hi):
                best = self._best.pop(gk, None)
                self._sent.discard(gk)
                if best is not None:
                    if self.closed.offer_pair(gk[0], gk[1], best[0], best[1]):
                        self._closed_times.mark(gk[0], gk[1])
                    closed += 1
                for unit in ((gk[2], gk[3]), (gk[2], gk[4])):
                    self._by_unit.pop(unit, None)
        if watermark - self._expired_at >= _EXPIRE_EVERY_S:  # a scan of every pair: not at every call
            self._expired_at = watermark
            self.closed.expire(watermark - self.params.cooldown_s)
            self._closed_times.forget_before(watermark - self.params.cooldown_s)
        return closed

    def purge_user(self, user_id: str) -> None:
        """Forget every group of a user (erasure, withdrawal)."""
        for gk in [gk for gk in self._best if user_id in gk[:2]]:
            del self._best[gk]
            self._sent.discard(gk)
        for hi, crossings in self._held.items():
            self._held[hi] = [c for c in crossings if user_id not in (c.user_a, c.user_b)]
        self.released = [c for c in self.released if user_id not in (c.user_a, c.user_b)]
        self.closed.purge_user(user_id)
        self._closed_times.forget_user(user_id)

    def __len__(self) -> int:
        return len(self._best)
