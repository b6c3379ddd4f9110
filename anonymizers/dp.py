"""Optional differential privacy for location counts (off by default).

Mechanism, per window:

1. ``bound_contributions`` keeps each user in at most ``m = max_cells_per_user``
   base cells of the window (chosen with a seeded RNG, deterministically for a
   given input and seed). Adding or removing one user then changes at most
   ``m`` cell counts, each by at most 1: the L1 sensitivity of the vector of
   per-cell distinct-user counts is ``m``.
2. ``noisy_count`` adds two-sided geometric (discrete Laplace) noise
   ``P(Z = z) = (1 - a) / (1 + a) * a**|z|`` with ``a = exp(-epsilon / m)``
   to each count.
3. The k threshold is applied to the NOISY counts, after the noise (never to
   the true counts), and results are clamped at 0 (post-processing).

Guarantee: the noisy counts of one window over a fixed, data-independent set
of cells (``domain``) are epsilon-differentially private with respect to
adding or removing one user's pings in that window (user-level, because of
step 1). Thresholding and clamping are post-processing and keep that
guarantee. If the set of cells is taken from the data (``domain=None``, only
cells somebody was seen in), a cell appearing at all is itself data-dependent
(candidates are the cells non-empty after step 1, so one user adds at most m)
and the guarantee is (epsilon, delta)-DP with
``delta <= m * a**(k - 1) / (1 + a)`` (probability that one of the at most m
cells only that user made non-empty clears the threshold).

Not covered: the guarantee is per window; over several windows epsilons add
up (basic composition) for a user present in all of them. Hierarchical
generalization (``kanon.generalize_cells``) is NOT applied in DP mode: its
unions at several resolutions would multiply the sensitivity; DP output is
published at the base resolution only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

import h3
import numpy as np

from anonymizers.kanon import CellCount


@dataclass(frozen=True, slots=True)
class DPParams:
    """Privacy budget per window and the per-user contribution bound."""

    epsilon: float = 1.0
    max_cells_per_user: int = 1

    def __post_init__(self) -> None:
        e = self.epsilon
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= 0:
            raise ValueError(f"epsilon={e!r} must be a finite number > 0")
        m = self.max_cells_per_user
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"max_cells_per_user={m!r} must be an integer >= 1")


def _sort_key(value: Hashable) -> tuple[str, str]:
    """Deterministic order for mixed hashables."""
    return (type(value).__name__, str(value))


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
            picks = rng.choice(len(cells), size=max_cells_per_user, replace=False)
            cells = [cells[i] for i in sorted(picks)]
        for cell in cells:
            kept[cell].add(user)
    return {cell: frozenset(users) for cell, users in kept.items()}


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
    """Publish base cells whose noisy distinct-user count is >= k (see module guarantee)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1")
    bounded = bound_contributions(users_by_cell, params.max_cells_per_user, rng)
    # Without a domain, candidates come from the BOUNDED data, so one user adds at most m cells.
    cells = sorted(set(domain) if domain is not None else set(bounded))
    rows = []
    for cell in cells:
        noisy = noisy_count(len(bounded.get(cell, ())), params.epsilon, params.max_cells_per_user, rng)
        if noisy >= k:
            rows.append(CellCount(cell, h3.get_resolution(cell), noisy))
    return rows
