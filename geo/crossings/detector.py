"""Streaming crossing detection at one partition key: CellDetector, exact under route().

A detector holds the live pings of the keys routed to it, matches each new fix against them (and
the earlier fixes of its batch) with model._match, and forgets pings once no fix that is not late
can match them. Its event-time clock (geo.clock.EventClock) says which fixes are late.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from geo.clock import EventClock
from geo.crossings.crowd import CrowdCounts, GroupBests
from geo.crossings.model import (_MARGIN, Crossing, CrossingParams, Fix, LateFix, _expand, _match, _outside_zones,
                                 cooldown_period, crowd_slice, distance_bands, is_usable, places_of, slice_s)
from geo.distance import EARTH_RADIUS_M, cos_lat, midpoint
from geo.zones import SensitiveZones

_HORIZON_SLACK_S = 1.0  # keep pings a little longer than needed, against float rounding
_BUCKET_S = 30.0  # event-time slices of CellDetector's eviction index
_COLS = 6  # ts, lat, lon, cos(lat), user code, is_home
_TS, _LAT, _LON, _COS, _UID, _HOME = range(_COLS)


def _groups(x: np.ndarray, y: np.ndarray, key: np.ndarray, lo: np.ndarray, hi: np.ndarray, period: np.ndarray,
            n_users: int, n_keys: int, cooldown_s: float) -> tuple[np.ndarray, np.ndarray]:
    """An order of rows grouped by (x, y, key, lo, hi, period), groups sorted so, and where each group starts.

    One sort of the fields packed in an int64 when they fit (they do but for extreme inputs, or a
    cooldown of 0 s), else a sort on each field.
    """
    if x.size == 0:
        return np.empty(0, np.int64), np.empty(0, bool)
    lo_rel, step = lo - lo.min(), hi - lo
    sizes = [n_users, n_users, n_keys, int(lo_rel.max()) + 1, int(step.max()) + 1]
    if cooldown_s > 0:
        period_rel = period - period.min()
        sizes.append(int(period_rel.max()) + 1)
    if cooldown_s > 0 and math.prod(sizes) < 2**62 and step.min() >= 0:
        packed = x
        for size, field in zip(sizes[1:], (y, key, lo_rel, step, period_rel.astype(np.int64))):
            packed = packed * size + field
        by = np.argsort(packed)  # the order within a group does not matter
        packed = packed[by]
        return by, np.r_[True, packed[1:] != packed[:-1]]
    by = np.lexsort((period, hi, lo, key, y, x))
    starts = np.r_[True, (x[by][1:] != x[by][:-1]) | (y[by][1:] != y[by][:-1]) | (key[by][1:] != key[by][:-1])
                   | (lo[by][1:] != lo[by][:-1]) | (hi[by][1:] != hi[by][:-1]) | (period[by][1:] != period[by][:-1])]
    return by, starts


class _KeyState:
    """Live pings of one partition key, column-major in one float64 array."""

    __slots__ = ("data", "n")

    def __init__(self, capacity: int = 4):
        self.data = np.empty((_COLS, capacity), dtype=np.float64)
        self.n = 0

    def view(self) -> np.ndarray:
        return self.data[:, : self.n]

    def keep(self, mask: np.ndarray) -> int:
        kept = int(mask.sum())
        removed = self.n - kept
        if removed:
            self.data[:, :kept] = self.data[:, : self.n][:, mask]
            self.n = kept
        return removed

    def extend(self, rows: np.ndarray, horizon: float) -> None:
        """Append several rows (columns of `rows`), first dropping pings older than horizon if full."""
        k = rows.shape[1]
        if self.n + k > self.data.shape[1]:
            self.keep(self.data[_TS, : self.n] >= horizon)
            if self.n + k > 0.75 * self.data.shape[1]:
                grown = np.empty((_COLS, max(2 * self.data.shape[1], 2 * (self.n + k))), dtype=np.float64)
                grown[:, : self.n] = self.data[:, : self.n]
                self.data = grown
        self.data[:, self.n : self.n + k] = rows
        self.n += k


class CellDetector:
    """Streaming crossing detector for the partition keys given by route(); exact under route()."""

    def __init__(self, params: CrossingParams = CrossingParams(), zones: SensitiveZones | None = None,
                 sources: Iterable[Hashable] = ()):
        self.params = params
        self.zones = zones
        # Upstream partitions whose progress bounds the watermark (none: the max ts seen does).
        self.clock = EventClock(sources)
        self._keys: dict[str, _KeyState] = {}
        self._max_dlat = math.degrees(params.distance_m / EARTH_RADIUS_M) * (1 + _MARGIN) + 1e-9
        self._code: dict[str, int] = {}
        self._users: list[str | None] = []
        self._users_checked = 0  # len(self._users) at the last compaction check
        # Keys holding a ping of each _BUCKET_S slice of event time, so that evict() visits only
        # keys that hold something old (a scan of every key cost more than detection itself).
        # Lists, not sets (8 bytes an entry; a key may repeat, once per batch that touched it).
        self._buckets: dict[int, list[str]] = {}
        self.crowd = CrowdCounts(params)  # the crowd rule's people per (key, slice)
        self.crowds_seen = 0

    @property
    def watermark(self) -> float:
        """Event-time progress minus lateness_s; fixes older than this are late.

        Progress is the max ts seen or, when the detector was given its sources
        (upstream partitions), the smallest of the sources' max ts: a source that
        lags behind the others, or has sent nothing yet, then makes nothing late.
        """
        return self.clock.progress - self.params.lateness_s

    @property
    def horizon(self) -> float:
        """Event time before which no live ping can match a fix that is not late (evict() drops them)."""
        return self.watermark - self.params.window_s - _HORIZON_SLACK_S

    @property
    def replay_horizon(self) -> float:
        """Event time from which replaying this detector's input rebuilds all it needs: the live pings,
        and for the crowd rule the people of every unit and the pair groups (of two slices) not over yet."""
        return min(self.horizon, self.watermark - self.params.window_s - 2 * slice_s(self.params) - _HORIZON_SLACK_S)

    def advance(self, source: Hashable, ts: float) -> None:
        """Upstream partition `source` has reached event time ts, without a fix for this detector.

        Its later fixes are judged against it like after a fix of that time: a progress marker, so
        that a source whose pings all go to other partitions does not hold this watermark back.
        """
        if not math.isfinite(ts):
            raise ValueError(f"progress ts={ts!r} is not a finite number")
        self.clock.advance(source, float(ts))

    def source_progress(self) -> dict[Hashable, float]:
        """Each upstream partition's event-time progress as seen here (-inf: nothing from it yet)."""
        return self.clock.source_progress()

    @property
    def live_pings(self) -> int:
        """Number of pings held in state, over all keys."""
        return sum(s.n for s in self._keys.values())

    def _intern(self, user_id: str) -> int:
        code = self._code.get(user_id)
        if code is None:
            code = self._code[user_id] = len(self._users)
            self._users.append(user_id)
        return code

    def add(self, fix: Fix, home_key: str, key: str, source: Hashable | None = None) -> list[Crossing] | LateFix:
        """Match a fix against the live pings of key, store it, and return the new crossings."""
        return self.add_many([fix.user_id], [fix.ts], [fix.lat], [fix.lon], [fix.accuracy_m], [home_key], [key],
                             sources=None if source is None else [source])[0]

    def add_many(self, users: Sequence[str], ts: Sequence[float], lat: Sequence[float], lon: Sequence[float],
                 accuracy: Sequence[float | None], homes: Sequence[str], keys: Sequence[str],
                 sources: Sequence[Hashable] | None = None,
                 cooldown: GroupBests | None = None) -> list[list[Crossing] | LateFix]:
        """add() for a batch of fixes in arrival order, with the same results, one vectorized pass.

        Result i is what add() would have returned for fix i had the fixes been added one by one:
        lateness follows the watermark as it advances within the batch, and a fix is matched
        against the live pings of its key and the earlier fixes of the batch in that key.

        The crowd rule (geo.crossings.crowd): the batch's fixes are counted in their units first;
        a fix whose unit is a crowd is neither matched nor kept, and when a unit becomes one, its
        live pings are dropped and `cooldown.withdraw_unit` withdraws the crossings sent from it.
        So a batch acts as if its fixes had all been counted before any was matched: the results
        differ from add() one by one only by crossings that add() would have sent and then withdrawn.
        Where the key was a crowd in the previous slice (CrowdCounts.suspect), crossings are held
        back in `cooldown` (GroupBests.hold) and come out of its `released` once their slices are over,
        rather than sent and withdrawn again as a crowd that goes on fills its next slice.

        With a cooldown (GroupBests), result i keeps only the crossings that may still be a pair's
        final record (`_offered`): per pair group, the batch's best match if it is better than what
        was let through before; the others are never built (dense places produce many crossings per
        fix, nearly all of them repeats within the cooldown period).
        """
        p = self.params
        n = len(users)
        if n == 0:
            return []
        t = np.asarray(ts, dtype=np.float64)
        la, lo = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        bad_place = ~((la >= -90.0) & (la <= 90.0) & (lo >= -180.0) & (lo <= 180.0))
        bad = np.flatnonzero(bad_place | ~np.isfinite(t))
        if bad.size:
            i = int(bad[0])
            if bad_place[i]:
                raise ValueError(f"lat={lat[i]!r}, lon={lon[i]!r} is outside [-90, 90] x [-180, 180]")
            raise ValueError(f"ts={ts[i]!r} is not a finite epoch-seconds value")
        for home, key in zip(homes, keys):
            if home != key and home > key:
                raise ValueError(f"home_key={home!r} > key={key!r}: route() only sends guests to greater keys")
        # Event-time progress before each fix, as one by one: the slowest source's max ts (or the
        # max ts seen). A late fix is older than every source's max, so counting it changes nothing.
        before = self.clock.progress_before_each(t, sources)
        wm = before - p.lateness_s
        late = t < wm
        results: list[list[Crossing] | LateFix] = [[] for _ in range(n)]
        for i in np.flatnonzero(late).tolist():
            results[i] = LateFix(Fix(users[i], ts[i], lat[i], lon[i], accuracy[i]), float(wm[i]))
        take = np.flatnonzero(~late & is_usable(accuracy, p)).tolist()
        if take and self.zones:
            inside = np.asarray(self.zones.contains(np.asarray([lat[i] for i in take], dtype=np.float64),
                                                    np.asarray([lon[i] for i in take], dtype=np.float64)))
            take = [i for i, z in zip(take, np.atleast_1d(inside)) if not z]
        if take and self.crowd.limit > 0:
            take = self._count_people(take, users, t, keys, cooldown)
        if not take:
            return results
        # New fixes grouped by key (arrival order kept inside a group), after the live pings they meet.
        groups: dict[str, list[int]] = {}
        for i in take:
            groups.setdefault(keys[i], []).append(i)
        order = [i for g in groups.values() for i in g]
        m = len(order)
        intern = self._intern
        new = np.empty((_COLS, m), dtype=np.float64)
        new[_TS] = [ts[i] for i in order]
        new[_LAT] = [lat[i] for i in order]
        new[_LON] = [lon[i] for i in order]
        new[_COS] = cos_lat(new[_LAT])
        new[_UID] = [intern(users[i]) for i in order]
        new[_HOME] = [homes[i] == keys[i] for i in order]
        live_parts, live_lo, live_hi, new_lo, new_hi = [], [], [], [], []
        states, base, pos = [], 0, 0
        for key, members in groups.items():
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _KeyState()
            states.append(state)
            if state.n:
                live_parts.append(state.view())
            live_lo.append(base)
            base += state.n
            live_hi.append(base)
            new_lo.append(pos)
            pos += len(members)
            new_hi.append(pos)
        table = np.concatenate(live_parts + [new], axis=1) if live_parts else new
        # Candidates of new fix r of group g: the live pings of g and g's fixes before r, within the
        # latitude band a match needs, found by binary search in the rows sorted by (group, latitude).
        n_groups = len(groups)
        group_of = np.concatenate([np.repeat(np.arange(n_groups), np.asarray(live_hi) - np.asarray(live_lo)),
                                   np.repeat(np.arange(n_groups), [len(g) for g in groups.values()])])
        place = group_of * 512.0 + (table[_LAT] + 90.0)  # groups never overlap: latitudes span 180
        by_place = np.argsort(place, kind="stable")
        sorted_place = place[by_place]
        reach = self._max_dlat + 1e-6  # wider than the latitude test below (rounding in `place` is < 1e-7)
        row = np.arange(m, dtype=np.int64)
        probe = place[base:]
        left, at = _expand(row, np.searchsorted(sorted_place, probe - reach, side="left"),
                           np.searchsorted(sorted_place, probe + reach, side="right"))
        right = by_place[at]
        earlier = (right < base) | (right - base < left)  # a live ping, or a fix of the batch before r
        left, right = left[earlier], right[earlier]
        if left.size:
            # Cheap necessary conditions first (time, then latitude: the great-circle distance is at
            # least the meridian arc); the exact test runs on what is left.
            near = np.abs(new[_TS][left] - table[_TS][right]) <= p.window_s
            near &= np.abs(new[_LAT][left] - table[_LAT][right]) <= self._max_dlat
            near &= (new[_HOME][left] > 0) | (table[_HOME][right] > 0)  # guest-guest pairs belong to another key
            left, right = left[near], right[near]
            a, b = new[:, left], table[:, right]
            mask, d = _match(a[_TS], a[_LAT], a[_LON], a[_COS], a[_UID], b[_TS], b[_LAT], b[_LON], b[_COS], b[_UID], p)
            hit = np.flatnonzero(mask)
            if hit.size and self.zones:
                hit = hit[_outside_zones(a[_LAT, hit], a[_LON, hit], b[_LAT, hit], b[_LON, hit], self.zones)[2]]
            names = list(groups)
            new_group = np.repeat(np.arange(n_groups), [len(g) for g in groups.values()])
            if hit.size and cooldown is not None:
                hit = hit[self._offered(a[:, hit], b[:, hit], d[hit], new_group[left[hit]], names, cooldown)]
            # Arrival order of the new fixes; per fix, live pings first, then the batch's earlier fixes.
            hit = hit[np.lexsort((right[hit], np.asarray(order, dtype=np.int64)[left[hit]]))]
            suspect = self.crowd.suspect if cooldown is not None and self.crowd.recent() else None
            if hit.size:
                sent = []
                for r, crossing in zip(left[hit].tolist(), self._describe_pairs(a[:, hit], b[:, hit], d[hit],
                                                                                 new_group[left[hit]], names)):
                    if suspect is not None and (suspect(*crossing.group[:2]) or suspect(crossing.group[0], crossing.group[2])):
                        cooldown.hold(crossing)  # where a crowd just was: sent once its slices are decided
                    else:
                        results[order[r]].append(crossing)
                        sent.append(crossing)
                if cooldown is not None:
                    cooldown.mark_sent_many(sent)
        if cooldown is not None:
            cooldown.close(self.watermark)  # groups whose slices are over now filter what comes next
        horizon = self.horizon
        for state, lo, hi in zip(states, new_lo, new_hi):
            state.extend(new[:, lo:hi], horizon)
        # Each key goes into the buckets its new fixes fall in (not every bucket between the first
        # and the last: one fix years older than the others would make that millions of entries).
        bucket = np.floor(new[_TS] / _BUCKET_S).astype(np.int64)
        group = np.repeat(np.arange(n_groups), np.diff(np.r_[new_lo, m]))
        by = np.lexsort((bucket, group))
        first = np.r_[True, (group[by][1:] != group[by][:-1]) | (bucket[by][1:] != bucket[by][:-1])]
        names = list(groups)
        buckets = self._buckets
        for g, b in zip(group[by][first].tolist(), bucket[by][first].tolist()):
            keys_of = buckets.get(b)
            if keys_of is None:
                keys_of = buckets[b] = []
            keys_of.append(names[g])
        return results

    def _count_people(self, take: list[int], users: Sequence[str], t: np.ndarray, keys: Sequence[str],
                      cooldown: GroupBests | None) -> list[int]:
        """Count the fixes `take` in their units (crowd rule); the ones whose unit is not a crowd."""
        slices = crowd_slice(t[take], self.params).tolist()
        became = self.crowd.note([keys[i] for i in take], slices, [users[i] for i in take])
        for key, s in became:
            state = self._keys.get(key)
            if state is not None:  # its pings will never be in a crossing here again
                state.keep(crowd_slice(state.data[_TS, : state.n], self.params) != s)
            if cooldown is not None:
                cooldown.withdraw_unit(key, s)
        self.crowds_seen += len(became)
        is_crowd = self.crowd.is_crowd
        return [i for i, s in zip(take, slices) if not is_crowd(keys[i], s)]

    def _offered(self, a: np.ndarray, b: np.ndarray, d: np.ndarray, key_of: np.ndarray, names: list[str],
                 cooldown: GroupBests) -> np.ndarray:
        """Which matched pairs `cooldown` lets through: per pair group (crowd.GroupBests: pair, key,
        slices, period), its best match of the batch by (time, distance), if it is better than what
        was let through before. What is held back can never be a pair's final record: something let
        through before is at least as good, and withdrawn only with it.
        """
        p = self.params
        ts = np.maximum(a[_TS], b[_TS])
        cooldown_s = cooldown.params.cooldown_s
        period = cooldown_period(ts, cooldown_s)
        sa, sb = crowd_slice(a[_TS], p), crowd_slice(b[_TS], p)
        lo, hi = np.minimum(sa, sb), np.maximum(sa, sb)
        ua, ub = a[_UID].astype(np.int64), b[_UID].astype(np.int64)
        x, y = np.minimum(ua, ub), np.maximum(ua, ub)
        # Each group together (in the order of (x, y, key, lo, hi, period)), then its best by (time, distance).
        by, starts = _groups(x, y, key_of, lo, hi, period, len(self._users), len(names), cooldown_s)
        at = np.flatnonzero(starts)
        group = np.cumsum(starts) - 1
        ts_by, d_by = ts[by], d[by]
        t_best = np.minimum.reduceat(ts_by, at)
        d_best = np.minimum.reduceat(np.where(ts_by == t_best[group], d_by, np.inf), at)
        # Matches tied with the best on time and distance (the same geometry, in practice) go too:
        # their place, which decides such a tie, is not computed here.
        tied = (ts_by == t_best[group]) & (d_by == d_best[group])
        first = by[at]
        # The names of the batch's users, each pair's two in name order.
        gx, gy = x[first], y[first]
        seen, index = np.unique(np.concatenate([gx, gy]), return_inverse=True)
        names_of = list(map(self._users.__getitem__, seen.tolist()))
        rank = np.empty(len(names_of), dtype=np.int64)
        rank[sorted(range(len(names_of)), key=names_of.__getitem__)] = np.arange(len(names_of))
        ix, iy = index[: gx.size], index[gx.size :]
        swap = rank[ix] > rank[iy]
        offered = cooldown.offer_many(names_of, np.where(swap, iy, ix), np.where(swap, ix, iy), names, key_of[first],
                                      lo[first], hi[first], t_best, d_best)
        mask = np.zeros(ts.size, dtype=bool)
        mask[by[tied & offered[group]]] = True
        return mask

    def _describe_pairs(self, a: np.ndarray, b: np.ndarray, d: np.ndarray, key_of: np.ndarray,
                        names: list[str]) -> list[Crossing]:
        """Crossings of matched pairs outside zones (a[:, k] the new fix, b[:, k] the other, found at key names[key_of[k]])."""
        mlat, mlon = midpoint(a[_LAT], a[_LON], b[_LAT], b[_LON])
        bands = distance_bands(d, self.params)
        places = places_of(np.atleast_1d(mlat), np.atleast_1d(mlon), self.params)
        users = self._users
        sa, sb = crowd_slice(a[_TS], self.params), crowd_slice(b[_TS], self.params)
        out: list[Crossing] = []
        crossing = Crossing._of_sorted
        for ua, ub, ta, tb, place, band, dd, kk, xa, xb in zip(
                a[_UID].astype(np.int64).tolist(), b[_UID].astype(np.int64).tolist(), a[_TS].tolist(), b[_TS].tolist(),
                places, bands.tolist(), d.tolist(), key_of.tolist(), np.minimum(sa, sb).tolist(),
                np.maximum(sa, sb).tolist()):
            x, y = users[ua], users[ub]
            out.append(crossing(*((x, y) if x < y else (y, x)), ta if ta > tb else tb, place, band, dd,
                                (names[kk], xa, xb)))
        return out

    def pings_of(self, user_id: str) -> int:
        """Number of live pings of a user held in state (for audits)."""
        code = self._code.get(user_id)
        if code is None:
            return 0
        return int(sum(int((s.data[_UID, : s.n] == code).sum()) for s in self._keys.values()))

    def purge_user(self, user_id: str) -> int:
        """Forget every ping of a user (erasure, consent withdrawal); returns how many were removed."""
        code = self._code.pop(user_id, None)
        if code is None:
            return 0
        self._users[code] = None
        self.crowd.forget_user(user_id)
        removed = 0
        for state in self._keys.values():
            removed += state.keep(state.data[_UID, : state.n] != code)
        return removed

    def evict(self, watermark: float | None = None) -> int:
        """Drop pings too old to match any non-late fix; returns how many were removed."""
        wm = self.watermark if watermark is None else min(watermark, self.watermark)
        horizon = wm - self.params.window_s - _HORIZON_SLACK_S
        removed = 0
        if math.isfinite(horizon):
            # A ping older than the horizon lies in a bucket <= edge, and its key is in that bucket.
            edge = math.floor(horizon / _BUCKET_S)
            for b in sorted(b for b in self._buckets if b <= edge):
                keys = self._buckets[b] if b == edge else self._buckets.pop(b)  # the edge is partly live
                if b == edge and len(keys) > 2 * len(set(keys)):
                    keys[:] = set(keys)  # revisited at every evict: keep it free of repeats
                for key in set(keys):
                    state = self._keys.get(key)
                    if state is None:
                        continue
                    removed += state.keep(state.data[_TS, : state.n] >= horizon)
                    if state.n == 0:
                        del self._keys[key]
                    elif state.n < state.data.shape[1] // 4 and state.data.shape[1] > 4:
                        state.data = state.data[:, : max(4, 2 * state.n)].copy()
        if math.isfinite(wm):
            self.crowd.expire(wm)
        self._compact_users()
        return removed

    def _compact_users(self) -> None:
        """Drop interned users with no live ping, once the table has doubled since the last check."""
        if len(self._users) < 2 * max(512, self._users_checked):
            return
        self._users_checked = len(self._users)
        live = np.unique(np.concatenate([s.data[_UID, : s.n] for s in self._keys.values()])) if self._keys else np.empty(0)
        if len(self._users) <= 2 * max(16, live.size):
            return
        remap = np.full(len(self._users), -1.0)
        remap[live.astype(np.int64)] = np.arange(live.size, dtype=np.float64)
        self._users = [self._users[int(c)] for c in live]
        self._users_checked = len(self._users)
        self._code = {u: i for i, u in enumerate(self._users) if u is not None}
        for s in self._keys.values():
            s.data[_UID, : s.n] = remap[s.data[_UID, : s.n].astype(np.int64)]

    def memory_bytes(self) -> int:
        """Estimated bytes held by the detector's state."""
        total = sys.getsizeof(self._keys) + sys.getsizeof(self._code) + sys.getsizeof(self._users)
        for key, s in self._keys.items():
            total += sys.getsizeof(key) + sys.getsizeof(s) + s.data.nbytes + 112
        total += sum(sys.getsizeof(keys) for keys in self._buckets.values())
        total += self.crowd.memory_bytes()
        for u in self._code:
            total += sys.getsizeof(u) + 32  # the string and its int code
        return total


