"""What a crossing is: its parameters, records and the rules every detector shares.

Definition: users A != B cross when some usable ping p of A and q of B satisfy
|t_p - t_q| <= window_s and haversine(p, q) <= distance_m. A ping is usable when
its accuracy_m is missing or <= max_accuracy_m (`is_usable`). A crossing is never
reported when either ping or the midpoint of the two lies inside a sensitive zone
(`_outside_zones`). Time is cut into cooldown periods aligned on the epoch
(`cooldown_period`); per pair and period, the reported crossing is the earliest in event time,
ties broken by distance, then place, then band (`supersedes`), so the report is a function of the
input, whatever order crossings are found in. A pair's current record is that of its latest
period (`supersedes`): an earlier crossing found later corrects it, an older period never does.

The batch search, the router, the streaming detector and the cooldown all apply
these functions, never a copy of them, so that every form agrees with
geo.oracle.brute_force_pairs bit for bit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import h3
import numpy as np

from geo.distance import haversine_pre_m, midpoint
from geo.zones import SensitiveZones

_DEG = math.pi / 180.0
_MARGIN = 1e-6  # relative safety margin on grid sizes; the final test is always exact


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class CrossingParams:
    """Parameters of crossing detection; the one place their defaults (DESIGN.md's) are declared."""

    distance_m: float = 250.0
    window_s: float = 300.0
    max_accuracy_m: float = 100.0
    cooldown_s: float = 3600.0
    lateness_s: float = 120.0
    place_resolution: int = 8
    partition_cell_m: float = 1000.0  # side of the spatial partition cells used by route()
    # The crowd rule (geo.crossings.crowd): a partition key's slice of window_s with more than this
    # many distinct users is a crowd, and no ping of it is matched there. 0: no crowd rule.
    crowd_users: int = 200

    def __post_init__(self) -> None:
        def _num(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"{name}={v!r} must be a number")
            return float(v)

        d = _num("distance_m")
        if not d > 0:
            raise ValueError(f"distance_m={self.distance_m!r} must be > 0")
        if not 1.0 <= d <= 1_000_000.0:
            raise ValueError(f"distance_m={self.distance_m!r} must be in [1, 1_000_000]")
        for name in ("window_s", "cooldown_s", "lateness_s"):
            v = _num(name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be finite and >= 0")
        if not _num("max_accuracy_m") >= 0:
            raise ValueError(f"max_accuracy_m={self.max_accuracy_m!r} must be >= 0")
        r = self.place_resolution
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 15:
            raise ValueError(f"place_resolution={r!r} must be an integer in [0, 15]")
        p = _num("partition_cell_m")
        if not (math.isfinite(p) and p >= d):
            raise ValueError(f"partition_cell_m={self.partition_cell_m!r} must be finite and >= distance_m={self.distance_m!r}")
        c = self.crowd_users
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"crowd_users={c!r} must be an integer >= 0 (0: no crowd rule)")


@dataclass(frozen=True, slots=True)
class Fix:
    """One location ping."""

    user_id: str
    ts: float  # epoch seconds
    lat: float
    lon: float
    accuracy_m: float | None = None
    consent_version: int = 0


@dataclass(frozen=True)
class ParticipantView:
    """A crossing as shown to one of its two participants."""

    user: str
    other: str
    ts: float
    place: str
    distance_band: str


@dataclass(frozen=True)
class Crossing:
    """A reported crossing of two users; place is a coarse H3 cell, distance a band."""

    user_a: str  # user_a < user_b
    user_b: str
    ts: float  # epoch seconds, max of the two ping times
    place: str  # H3 cell of the midpoint of the two fixes
    distance_band: str
    distance_m: float | None = None  # exact, for the order of model.supersedes; never published
    # Where the stream found it: (partition key, slice of one ping, slice of the other), slices
    # sorted (crowd.crowd_slice). The crowd rule withdraws it if either (key, slice) becomes a crowd.
    group: tuple[str, int, int] | None = None

    def __post_init__(self) -> None:
        if not self.user_a < self.user_b:
            raise ValueError(f"user_a={self.user_a!r} must sort before user_b={self.user_b!r}")

    @classmethod
    def _of_sorted(cls, user_a: str, user_b: str, ts: float, place: str, distance_band: str, distance_m: float,
                   group: tuple[str, int, int]) -> "Crossing":
        """The same Crossing, for a caller that has put user_a < user_b itself (the detector builds one
        or more per ping): the frozen dataclass's __init__ costs twice as much."""
        c = object.__new__(cls)
        object.__setattr__(c, "__dict__", {"user_a": user_a, "user_b": user_b, "ts": ts, "place": place,
                                           "distance_band": distance_band, "distance_m": distance_m, "group": group})
        return c

    @property
    def pair_key(self) -> str:
        """The repartitioning key of this crossing's pair."""
        return pair_key(self.user_a, self.user_b)

    def views(self) -> tuple[ParticipantView, ParticipantView]:
        """The two per-participant views (one for user_a, one for user_b)."""
        return (
            ParticipantView(self.user_a, self.user_b, self.ts, self.place, self.distance_band),
            ParticipantView(self.user_b, self.user_a, self.ts, self.place, self.distance_band),
        )


@dataclass(frozen=True)
class LateFix:
    """Marker returned by CellDetector.add for a fix older than the detector's watermark."""

    fix: Fix
    watermark: float


def pair_key(a: str, b: str) -> str:
    """Order-independent, unambiguous key of the pair {a, b}."""
    if a == b:
        raise ValueError(f"pair_key needs two different users, got {a!r} twice")
    lo, hi = (a, b) if a < b else (b, a)
    return f"{len(lo)}:{lo}|{hi}"


def split_pair_key(key: str) -> tuple[str, str]:
    """The two users (sorted) of a pair_key."""
    n, _, rest = key.partition(":")
    if not n.isdigit() or len(rest) < int(n) + 1 or rest[int(n)] != "|":
        raise ValueError(f"pair key={key!r} is not of the form '<len>:<a>|<b>'")
    return rest[: int(n)], rest[int(n) + 1 :]


# --------------------------------------------------------------------------- rules


def is_usable(accuracy_m, params: CrossingParams):
    """Whether pings of these accuracies (a number, None, or an array with nan for None) are used for crossings."""
    if accuracy_m is None or isinstance(accuracy_m, (int, float)):  # one fix (route): no array for it
        return not (accuracy_m is not None and accuracy_m > params.max_accuracy_m)
    return ~(np.asarray(accuracy_m, dtype=np.float64) > params.max_accuracy_m)  # unknown accuracy is usable


def cooldown_period(ts, cooldown_s: float):
    """The cooldown period of a crossing at ts (a number or an array): floor(ts / cooldown_s), aligned on the epoch.

    A pair is reported at most once per period. cooldown_s = 0: every distinct time is its own period.
    """
    if cooldown_s == 0:
        return ts
    if isinstance(ts, (int, float)):
        return math.floor(ts / cooldown_s) if math.isfinite(ts) else ts
    return np.floor(np.asarray(ts, dtype=np.float64) / cooldown_s)


def slice_s(params: CrossingParams) -> float:
    """Length of the crowd rule's time slices: the crossing window (at least 1 s)."""
    return max(float(params.window_s), 1.0)


def crowd_slice(ts, params: CrossingParams):
    """The crowd rule's slice of a time (a number: int; an array: int64 array): floor(ts / slice_s), aligned on the epoch."""
    s = slice_s(params)
    if isinstance(ts, (int, float)):
        return math.floor(ts / s)
    return np.floor(np.asarray(ts, dtype=np.float64) / s).astype(np.int64)


def slice_end(s: int, params: CrossingParams) -> float:
    """Event time at which slice s ends (a ping at or after it is in a later slice)."""
    return (s + 1) * slice_s(params)


def supersedes(ts: float, distance_m: float | None, place: str | None, band: str | None,
               current: tuple[float, float | None, str | None, str | None] | None, cooldown_s: float) -> bool:
    """Whether a pair's crossing replaces its `current` record (ts, distance_m, place, band), None if it has none.

    A crossing of a later period replaces it; of the same period, only one before it in the stated
    order: earlier event time, then smaller distance (the exact metres of model._match, which every
    detector computes alike), then smaller place (H3 string), then smaller band string; of an older
    period, never. The final record of a pair is thus its latest period's first crossing in that
    order, whatever order crossings arrive in. A value not known yet (None: the detector's
    pre-filter knows no place) wins a tie on what is known, so that a later stage decides it.
    """
    if current is None:
        return True
    p, q = cooldown_period(ts, cooldown_s), cooldown_period(current[0], cooldown_s)
    if p != q:
        return p > q
    for mine, theirs in zip((ts, distance_m, place, band), current):
        if mine is None or theirs is None:
            return True
        if mine != theirs:
            return mine < theirs
    return False


def _fmt_m(x: float) -> str:
    return f"{x:g}"


def distance_band(d: float, params: CrossingParams) -> str:
    """Coarse band of a distance in metres: '<D/5', 'D/5-2D/5', '2D/5-D' or '>D' (e.g. '<50m')."""
    b1, b2, top = params.distance_m / 5.0, 2.0 * params.distance_m / 5.0, params.distance_m
    if d < b1:
        return f"<{_fmt_m(b1)}m"
    if d < b2:
        return f"{_fmt_m(b1)}-{_fmt_m(b2)}m"
    if d <= top:
        return f"{_fmt_m(b2)}-{_fmt_m(top)}m"
    return f">{_fmt_m(top)}m"


def distance_bands(d: np.ndarray, params: CrossingParams) -> np.ndarray:
    """Vectorized distance_band over an array of distances."""
    D = params.distance_m
    labels = np.array(
        [distance_band(0.0, params), distance_band(D / 5.0, params), distance_band(D, params), distance_band(math.inf, params)],
        dtype=object,
    )
    idx = np.where(d < D / 5.0, 0, np.where(d < 2.0 * D / 5.0, 1, np.where(d <= D, 2, 3)))
    return labels[idx]


def place_of(lat: float, lon: float, params: CrossingParams) -> str:
    """The coarsened place (H3 cell) reported for a crossing whose midpoint is (lat, lon)."""
    return h3.latlng_to_cell(float(lat), float(lon), params.place_resolution)


try:  # the compiled function behind h3.api.basic_int.latlng_to_cell, without its Python wrapper
    from h3._cy import latlng_to_cell as _h3_cell
except ImportError:  # pragma: no cover - another h3 layout
    from h3.api.basic_int import latlng_to_cell as _h3_cell

_CELL_NAMES: dict[int, str] = {}  # H3 cell int -> its string: places repeat, the formatting need not
_CELL_NAMES_MAX = 1 << 16


def places_of(lat: np.ndarray, lon: np.ndarray, params: CrossingParams) -> list[str]:
    """place_of for many midpoints (the same strings)."""
    names, res = _CELL_NAMES, params.place_resolution
    if len(names) > _CELL_NAMES_MAX:
        names.clear()
    out = []
    for cell in map(_h3_cell, np.asarray(lat, dtype=np.float64).tolist(), np.asarray(lon, dtype=np.float64).tolist(),
                    itertools.repeat(res)):
        name = names.get(cell)
        if name is None:
            name = names[cell] = h3.int_to_str(cell)
        out.append(name)
    return out


def _match(ts0, lat0, lon0, cos0, u0, ts1, lat1, lon1, cos1, u1, params: CrossingParams):
    """Exact crossing test for ping pairs (arrays or broadcast scalars): (mask, distance_m)."""
    d = haversine_pre_m(lat0, lon0, cos0, lat1, lon1, cos1)
    mask = (u0 != u1) & (np.abs(ts0 - ts1) <= params.window_s) & (d <= params.distance_m)
    return mask, d


def _outside_zones(lat0, lon0, lat1, lon1, zones: SensitiveZones | None):
    """Midpoints of ping pairs, and whether each midpoint is outside every zone."""
    mlat, mlon = midpoint(lat0, lon0, lat1, lon1)
    if zones:
        ok = ~np.asarray(zones.contains(mlat, mlon))
    else:
        ok = np.ones(np.shape(mlat), dtype=bool)
    return np.atleast_1d(mlat), np.atleast_1d(mlon), np.atleast_1d(ok)


def _expand(src, lo, hi):
    """All (src[k], j) for j in [lo[k], hi[k])."""
    counts = hi - lo
    counts = np.maximum(counts, 0)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rep_src = np.repeat(src, counts)
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    j = starts + np.arange(total, dtype=np.int64)
    return rep_src, j
