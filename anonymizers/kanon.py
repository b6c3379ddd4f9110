"""k-anonymity for published aggregates: H3 cell generalization and group thresholds.

The pipeline publishes places with ``anonymizers.regions.publish_regions`` (issue 19). The cell
rule below (``generalize_cells``) was its rule before; it stays for comparison (bench/bench_regions.py).

Location rule (``generalize_cells``), decided top-down from each cell at
``coarsest_resolution`` that has users under it:

* ``U(c)`` is the set of distinct users seen in the base cells under ``c``
  (a union, never a sum of counts). Base cells are mapped to ancestors with
  ``h3.cell_to_parent`` of the base cell; coordinates are never re-indexed.
* ``c`` is split into its non-empty children only if EVERY non-empty child
  has ``|U(child)| >= k``; each child is then decided the same way.
* Otherwise ``c`` is published itself if ``|U(c)| >= k``.
* Otherwise ``c`` is suppressed with everything under it. This can only
  happen at the coarsest resolution, because a finer cell is only visited
  when it already has ``>= k`` users.

Consequences, which the property tests hold:

* every published row has ``users >= k``;
* published cells never overlap (no duplicate, no ancestor/descendant pair),
  and cover exactly the base cells whose coarsest ancestor is not suppressed;
* nothing suppressed can be recovered by subtraction: suppression only removes
  whole coarsest-resolution cells, no published cell lies inside or above one,
  and a parent is never published together with any of its children.

The price is precision: one below-k child makes all its siblings be published
at the parent's resolution.

Group rule (``publish_groups``): groups with ``>= k`` distinct users are
published; the union of all below-k groups forms one ``("other", ...)`` row,
published only if it alone has ``>= k`` distinct users (a real group whose
values are all "other" joins that row). A single below-k group
is thus never published on its own, and callers must not publish a grand total
next to these rows (that would let "other" be recovered).

Both functions return counts (ints) only, never the user sets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

import h3

OTHER = "other"


@dataclass(frozen=True, slots=True)
class KAnonParams:
    """k threshold and the H3 resolutions the location generalization works between."""

    k: int = 10
    base_resolution: int = 9
    coarsest_resolution: int = 5

    def __post_init__(self) -> None:
        for name in ("k", "base_resolution", "coarsest_resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}={value!r} must be an integer")
        if self.k < 2:
            raise ValueError(f"k={self.k} must be >= 2")
        if not 0 <= self.base_resolution <= 15:
            raise ValueError(f"base_resolution={self.base_resolution} is outside [0, 15]")
        if not 0 <= self.coarsest_resolution <= self.base_resolution:
            raise ValueError(
                f"coarsest_resolution={self.coarsest_resolution} is outside "
                f"[0, base_resolution={self.base_resolution}]"
            )


@dataclass(frozen=True, slots=True)
class CellCount:
    """One published location aggregate: an H3 cell and its distinct-user count."""

    cell: str
    resolution: int
    users: int


@dataclass(frozen=True, slots=True)
class GroupCount:
    """One published group aggregate: the group's values and its distinct-user count."""

    group: tuple[str, ...]
    users: int


def _check_base_cells(cells: Iterable[str], base_resolution: int) -> None:
    """Raise ValueError naming the first cell that is invalid or not at base_resolution."""
    for cell in cells:
        if not isinstance(cell, str) or not h3.is_valid_cell(cell):
            raise ValueError(f"cell={cell!r} is not a valid H3 cell")
        res = h3.get_resolution(cell)
        if res != base_resolution:
            raise ValueError(
                f"cell={cell!r} has resolution {res}, expected base_resolution={base_resolution}"
            )


def generalize_cells(
    users_by_cell: Mapping[str, set | frozenset], params: KAnonParams = KAnonParams()
) -> list[CellCount]:
    """Publish k-anonymous, non-overlapping H3 cells from base-resolution user sets."""
    nonempty = {cell: users for cell, users in users_by_cell.items() if users}
    _check_base_cells(users_by_cell.keys(), params.base_resolution)
    base, coarsest, k = params.base_resolution, params.coarsest_resolution, params.k

    # users[r][cell] = distinct users under cell at resolution r; children[r][cell] = its
    # non-empty children at r + 1. Built bottom-up from the base cells' own ancestors.
    users: dict[int, dict[str, frozenset]] = {base: {c: frozenset(u) for c, u in nonempty.items()}}
    children: dict[int, dict[str, list[str]]] = {}
    for res in range(base - 1, coarsest - 1, -1):
        members: dict[str, set] = defaultdict(set)
        kids: dict[str, list[str]] = defaultdict(list)
        for child, child_users in users[res + 1].items():
            parent = h3.cell_to_parent(child, res)
            members[parent] |= child_users
            kids[parent].append(child)
        users[res] = {c: frozenset(u) for c, u in members.items()}
        children[res] = kids

    published: list[CellCount] = []
    stack = [(cell, coarsest) for cell in users[coarsest]]
    while stack:
        cell, res = stack.pop()
        if res < base and all(len(users[res + 1][kid]) >= k for kid in children[res][cell]):
            stack.extend((kid, res + 1) for kid in children[res][cell])
        elif len(users[res][cell]) >= k:
            published.append(CellCount(cell, res, len(users[res][cell])))
        # else: only reachable at the coarsest resolution; the whole cell is suppressed.
    published.sort(key=lambda row: (row.resolution, row.cell))
    return published


def publish_groups(
    users_by_group: Mapping[tuple[Hashable, ...], set | frozenset], k: int
) -> list[GroupCount]:
    """Publish groups with >= k distinct users, plus one "other" row for the rest if it has >= k."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k={k!r} must be an integer >= 2")
    arity: int | None = None
    for group in users_by_group:
        if not isinstance(group, tuple) or not group:
            raise ValueError(f"group={group!r} must be a non-empty tuple")
        if arity is None:
            arity = len(group)
        elif len(group) != arity:
            raise ValueError(f"group={group!r} has {len(group)} values, expected {arity}")
    if arity is None:
        return []
    other_key = (OTHER,) * arity

    rows: list[GroupCount] = []
    other: set = set()
    for group, members in users_by_group.items():
        # A real group spelled ("other", ...) (e.g. device_class "other") joins the remainder
        # row instead of being published twice under the same key.
        if len(members) >= k and tuple(str(v) for v in group) != other_key:
            rows.append(GroupCount(tuple(str(v) for v in group), len(members)))
        else:
            other |= members
    rows.sort(key=lambda row: row.group)
    if len(other) >= k:
        rows.append(GroupCount(other_key, len(other)))
    return rows
