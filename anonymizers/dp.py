"""Optional differential privacy for location counts (off by default): noisy counts, private partition selection.

Mechanism, per window:

1. ``bound_contributions`` keeps each user in at most ``m = max_cells_per_user``
   base cells of the window (chosen with a seeded RNG, deterministically for a
   given input and seed). Adding or removing one user then changes at most
   ``m`` cell counts, each by at most 1: the L1 sensitivity of the vector of
   per-cell distinct-user counts is ``m``.
2. ``noisy_count`` adds two-sided geometric (discrete Laplace) noise
   ``P(Z = z) = (1 - a) / (1 + a) * a**|z|`` with ``a = exp(-epsilon / m)``
   to each count.
3. A cell is published if its NOISY count reaches the threshold
   ``tau = max(k, publication_threshold(params))`` (never tested on the true
   count); published counts are clamped at 0 (post-processing).

Guarantee: (epsilon, delta)-DP per window with respect to adding or removing
one user's pings in that window (user-level, because of step 1), with the
candidate cells taken from the data. The noisy counts of the cells both
neighbours share are epsilon-DP (Laplace mechanism, sensitivity m). The cells
only the added user made non-empty (at most m, each with count 1) are the
risk: one is published with probability ``P(1 + Z >= tau) = a**(tau - 1) /
(1 + a)``, so all of them together with at most ``m * a**(tau - 1) / (1 + a)``.
``publication_threshold`` is the smallest ``tau`` that keeps this at or below
``delta`` (private partition selection by Laplace thresholding, as in
PipelineDP). ``delta`` is at most ``MAX_DELTA`` (1e-6); ``DPParams`` refuses
more. With ``domain`` (a declared, data-independent set of cells) the guarantee
is pure epsilon-DP whatever the threshold.

Cells: the base cells as given, or (``resolution``) their ancestors at one fixed resolution,
chosen before seeing data: a user then spans fewer cells (fewer lost to the bound) and cells hold
more users (more clear the threshold). Measured in bench/RESULTS.md.

Shards: the worker counts each window in several independent parts (the statistics partitions,
keyed by coarse cell), and one user's pings can reach several of them. With ``shards = s``, each
part keeps a user in at most ``max(1, m // s)`` cells, so a user changes at most
``sensitivity = s * max(1, m // s)`` counts in all (never more than ``max(m, s)``); noise and
threshold use that sensitivity, and the guarantee above holds for the window as a whole.

Over a declared domain (``anonymizers.servicearea``): a user's cells outside it are dropped
before the bound (a data-independent filter), every domain cell gets a noisy count, and
publishing those that reach k is post-processing.

Not covered: the guarantee is per window; over several windows epsilons and
deltas add up (basic composition) for a user present in all of them: with
hourly windows, a user seen all day is protected at (24 epsilon, 24 delta) for
that day (``privacy_budget``). Regions (``regions.publish_regions``) are NOT formed in DP mode: their
unions at several resolutions would multiply the sensitivity; DP output is
published at the base resolution only, as one-cell regions.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

import h3
import numpy as np

from anonymizers.kanon import CellCount


MAX_DELTA = 1e-6


@dataclass(frozen=True, slots=True)
class DPParams:
    """Privacy budget per window (epsilon, delta) and the per-user contribution bound."""

    epsilon: float = 1.0
    max_cells_per_user: int = 1
    delta: float = MAX_DELTA
    resolution: int | None = None  # H3 resolution of the published cells; None: the base cells as given
    shards: int = 1  # independent parts the window is counted in, all of which one user can reach

    def __post_init__(self) -> None:
        e = self.epsilon
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= 0:
            raise ValueError(f"epsilon={e!r} must be a finite number > 0")
        m = self.max_cells_per_user
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"max_cells_per_user={m!r} must be an integer >= 1")
        d = self.delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= MAX_DELTA:
            raise ValueError(f"delta={d!r} must be in (0, {MAX_DELTA:g}]: a larger delta lets a lone user's "
                             "place be published too often")
        r = self.resolution
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 15):
            raise ValueError(f"resolution={r!r} must be None or an integer in [0, 15]")
        s = self.shards
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"shards={s!r} must be an integer >= 1")

    @property
    def cells_per_shard(self) -> int:
        """Cells one user is kept in, in each shard."""
        return max(1, self.max_cells_per_user // self.shards)

    @property
    def sensitivity(self) -> int:
        """Counts one user can change in a window, over all shards (the noise scale is sensitivity / epsilon)."""
        return self.shards * self.cells_per_shard


def publication_threshold(params: DPParams) -> int:
    """The smallest noisy count a cell needs so that a lone user's cells are published with probability <= delta."""
    m = params.sensitivity
    a = math.exp(-params.epsilon / m)
    # m * a**(tau - 1) / (1 + a) <= delta  <=>  tau - 1 >= log(delta * (1 + a) / m) / log(a)
    tau = 1 + max(0, math.ceil(math.log(params.delta * (1 + a) / m) / math.log(a) - 1e-9))
    while tau > 1 and m * a ** (tau - 2) / (1 + a) <= params.delta:  # floating point: the smallest that holds
        tau -= 1
    while m * a ** (tau - 1) / (1 + a) > params.delta:
        tau += 1
    return tau


def _sort_key(value: Hashable) -> tuple[str, str]:
    """Deterministic order for mixed hashables."""
    return (type(value).__name__, str(value))


class KeyedRandomness:
    """Randomness as a keyed function of what it is drawn for: the same (secret, label, purpose, item)
    always gives the same draws, so a window published again (a replay, a restart) shows the same
    noise, and no one without the secret can predict it.

    Passed where a numpy Generator is taken (`bound_contributions`, `publish_noisy_cells`), it draws
    each user's kept cells from generator("bound", user) and each cell's noise from
    generator("noise", cell): the result depends on neither the order of the input nor on how many
    other users or cells were drawn before.
    """

    def __init__(self, secret: bytes, label: str):
        self._key = hashlib.blake2b(secret, digest_size=32, person=b"crosspaths-dp").digest()
        self.label = label

    def generator(self, purpose: str, item: Hashable) -> np.random.Generator:
        digest = hashlib.blake2b(f"{self.label}\x1f{purpose}\x1f{_sort_key(item)}".encode(), key=self._key,
                                 digest_size=16).digest()
        return np.random.default_rng(int.from_bytes(digest, "big"))


def _draws(rng, purpose: str, item: Hashable) -> np.random.Generator:
    return rng.generator(purpose, item) if isinstance(rng, KeyedRandomness) else rng


def bound_contributions(
    users_by_cell: Mapping[str, set | frozenset],
    max_cells_per_user: int,
    rng: np.random.Generator,
) -> dict[str, frozenset]:
    """Keep each user in at most max_cells_per_user cells, chosen with rng (deterministic per seed)."""
    if isinstance(max_cells_per_user, bool) or not isinstance(max_cells_per_user, int) or max_cells_per_user < 1:
        raise ValueError(f"max_cells_per_user={max_cells_per_user!r} must be an integer >= 1")
    cells_by_user: dict[Hashable, list[str]] = defaultdict(list)
    for cell in sorted(users_by_cell):
        for user in users_by_cell[cell]:
            cells_by_user[user].append(cell)
    kept: dict[str, set] = defaultdict(set)
    # Sorted users and cells: the same input and seed always keep the same cells.
    for user in sorted(cells_by_user, key=_sort_key):
        cells = cells_by_user[user]
        if len(cells) > max_cells_per_user:
            picks = _draws(rng, "bound", user).choice(len(cells), size=max_cells_per_user, replace=False)
            cells = [cells[i] for i in sorted(picks)]
        for cell in cells:
            kept[cell].add(user)
    return {cell: frozenset(users) for cell, users in kept.items()}


def admit_cell(kept: tuple[str, ...], cell: str, m: int) -> tuple[str, ...] | None:
    """The contribution bound where a user's pings are read in their own order (the ingest stage).

    `kept` are the distinct cells the user's earlier pings of this window counted in. A ping in `cell`
    counts if `cell` is one of them or fewer than m are kept: the user's first m distinct cells of the
    window, in the order of their own pings. Returns the kept cells after this ping (`kept` itself
    when nothing changes), or None when the ping does not count. Over all statistics partitions a
    user then changes at most m counts per window, whatever the partitioning; the choice depends on
    nothing but the user's own pings, so neighbouring inputs keep everyone else's counts the same.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m={m!r} must be an integer >= 1")
    if cell in kept:
        return kept
    return kept + (cell,) if len(kept) < m else None


def bound_in_order(visits: Iterable[tuple[Hashable, str]], m: int) -> dict[str, frozenset]:
    """Users per cell when each user counts in their first m distinct cells (`admit_cell` over a window).

    `visits` are (user, cell) in the order of each user's pings (other users' visits may interleave).
    """
    kept: dict[Hashable, tuple[str, ...]] = {}
    users: dict[str, set] = defaultdict(set)
    for user, cell in visits:
        now = admit_cell(kept.get(user, ()), cell, m)
        if now is not None:
            kept[user] = now
            users[cell].add(user)
    return {cell: frozenset(u) for cell, u in users.items()}


def noisy_count(count: int, epsilon: float, sensitivity: int, rng: np.random.Generator) -> int:
    """Return count plus two-sided geometric noise of scale sensitivity / epsilon."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count={count!r} must be an integer >= 0")
    DPParams(epsilon, sensitivity)  # validates both, naming the bad one
    p = 1.0 - math.exp(-epsilon / sensitivity)
    # Difference of two i.i.d. geometrics is discrete Laplace (shifts of 1 cancel out).
    noise = int(rng.geometric(p)) - int(rng.geometric(p))
    return int(count) + noise


def publish_noisy_cells(
    users_by_cell: Mapping[str, set | frozenset],
    params: DPParams,
    k: int,
    rng: np.random.Generator,
    domain: Iterable[str] | None = None,
) -> list[CellCount]:
    """Publish cells whose noisy distinct-user count reaches max(k, the (epsilon, delta) threshold).

    With a domain (cells declared before seeing data, at ``params.resolution`` when it is set),
    every domain cell gets a noisy count, only domain cells are published, and the threshold is k.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1")
    if params.resolution is not None:  # a fixed, data-independent resolution: coarser cells, fewer per user
        users_by_cell = _at_resolution(users_by_cell, params.resolution)
    if domain is not None:
        domain = frozenset(domain)
        for cell in domain:
            if params.resolution is not None and h3.get_resolution(cell) != params.resolution:
                raise ValueError(f"domain cell={cell!r} has resolution {h3.get_resolution(cell)}, "
                                 f"not resolution={params.resolution}")
        # Dropped before the bound, so a user's places outside the domain take none of its m cells.
        users_by_cell = {cell: users for cell, users in users_by_cell.items() if cell in domain}
    bounded = bound_contributions(users_by_cell, params.cells_per_shard, rng)
    # Without a domain, candidates come from the BOUNDED data, so one user adds at most m cells.
    cells = sorted(domain) if domain is not None else sorted(bounded)
    threshold = k if domain is not None else max(k, publication_threshold(params))
    rows = []
    for cell in cells:
        noisy = noisy_count(len(bounded.get(cell, ())), params.epsilon, params.sensitivity, _draws(rng, "noise", cell))
        if noisy >= threshold:
            rows.append(CellCount(cell, h3.get_resolution(cell), noisy))
    return rows


def _at_resolution(users_by_cell: Mapping[str, set | frozenset], resolution: int) -> dict[str, set]:
    """Users per ancestor cell at the resolution (every cell must be at it or finer)."""
    coarse: dict[str, set] = defaultdict(set)
    for cell, users in users_by_cell.items():
        res = h3.get_resolution(cell)
        if res < resolution:
            raise ValueError(f"cell={cell!r} has resolution {res}, coarser than resolution={resolution}")
        coarse[h3.cell_to_parent(cell, resolution)].update(users)
    return coarse


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """What one user is protected at: per window, and per day by basic composition over its windows."""

    epsilon: float
    delta: float  # 0 over a declared domain: pure epsilon-DP
    windows_per_day: int

    @property
    def epsilon_per_day(self) -> float:
        """Epsilon for a user seen in every window of a day."""
        return self.epsilon * self.windows_per_day

    @property
    def delta_per_day(self) -> float:
        """Delta for a user seen in every window of a day."""
        return self.delta * self.windows_per_day

    def statement(self) -> str:
        """One line for people."""
        if self.delta:
            per_window = f"(epsilon={self.epsilon:g}, delta={self.delta:g})"
            per_day = f"(epsilon={self.epsilon_per_day:g}, delta={self.delta_per_day:.2g})"
        else:
            per_window, per_day = f"epsilon={self.epsilon:g} (pure)", f"epsilon={self.epsilon_per_day:g} (pure)"
        return (f"{per_window} per window; {per_day} per day for a user seen in all "
                f"{self.windows_per_day} windows of a day (basic composition)")


def privacy_budget(params: DPParams, window_s: float, declared_domain: bool) -> PrivacyBudget:
    """The per-window and per-day guarantee of publishing every window of window_s seconds with params."""
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) or not 0 < window_s <= 86400:
        raise ValueError(f"window_s={window_s!r} must be in (0, 86400]")
    # The windows a UTC day can overlap: one more than fit in it when they do not divide the day.
    windows = math.ceil(86400 / window_s) + (1 if 86400 % window_s else 0)
    return PrivacyBudget(params.epsilon, 0.0 if declared_domain else params.delta, windows)
