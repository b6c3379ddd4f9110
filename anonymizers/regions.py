"""k-anonymous location regions: H3 cells with >= k users, and the remainders of their parents.

Location rule (``publish_regions``), decided bottom-up, from the base cells to the cells at
``coarsest_resolution``:

* ``U(S)`` is the set of distinct users seen in the base cells of a set ``S`` (a union, never a
  sum of counts). Base cells are mapped to ancestors with ``h3.cell_to_parent``.
* A base cell with ``|U| >= k`` is published on its own. Every other base cell is *left over*
  to its parent.
* At each coarser cell ``c``, the leftover of ``c`` is the union of its children's leftovers.
  If ``|U(leftover)| >= k``, ``c`` is published as the *remainder of c*: ``c`` minus every region
  already published inside it, empty places included. When nothing was published inside ``c``
  and one region suffices, that is the whole cell ``c`` (a single-cell row, as the cell rule
  published). The children with a leftover are taken in H3 order and gathered into groups of
  ``>= k`` users (a last group short of k joins the one before), one region each, ids
  ``<c>-rest-1``, ``-2``, ... (``<c>-rest`` for one); the last also takes the children with no
  leftover. Otherwise the leftover is passed on to ``c``'s parent.
* A leftover still below k at the coarsest resolution (it has users, fewer than k) joins one
  region published inside that coarsest cell, other than a lone base cell: the one whose union
  with it lies in the finest H3 cell ``a`` (then the fewest users, then the id). Those two are
  replaced by the region of ``a``: ``a`` minus the other regions published inside it. With no
  such region, the leftover is suppressed; so memberships are suppressed only where nothing but
  lone base cells (or nothing) could be published.

A region is published as its enclosing cell, an id, its member cells (the fewest H3 cells whose
union is the region: cells at several resolutions, chosen from what is published, never from
where users were) and its count. Member cells of all published regions of a window partition the
places they cover: once a region is published at ``c``, all of ``c`` is covered.

What "recoverable by subtraction" means here. A partner knows each published region's member
cells and count. From counts alone, the exact size of a group is derived by a difference
``n(A) - n(B)`` of sums over two sets of published regions, each pairwise disjoint, where the
places of ``B`` lie inside those of ``A``: it counts ``U(A) \\ U(B)``, the users seen in ``A``'s
places but not in ``B``'s (with nested regions, e.g. a parent published next to its child,
``n(parent) - n(child)`` is exactly the users seen only outside the child). A sum over disjoint
regions counts their union only when nobody was in two of them; a partner may assume so, so
the worst case is taken. Guarantees, which the property tests hold (and
``anonymizers.differencing`` checks by brute force):

* every published region has ``users >= k``;
* the member cells of a window's regions never overlap, so no region's places lie inside the
  union of others: no difference applies, and every derivable group is a union of whole
  published regions, with ``>= k`` users;
* a suppressed leftover is never published, alone or inside a region. The structure tells that
  a leftover was below k where a cell's region is missing, and that nobody at all was left over
  where a coarsest cell's rest stays uncovered next to a published region other than a lone base
  cell (a leftover would have joined it): absence, never a count between 1 and k - 1;
* monotone where it can be: a base cell with ``>= k`` users is published on its own whatever else
  the window holds (users arriving around it never coarsen it), and more memberships in a base
  cell that had users never give that cell a coarser region (or suppress it): the resolution of
  its region never drops (which group of its cell it falls in may change).

Not guaranteed, and impossible for any rule that publishes disjoint regions of >= k users and a
lone base cell of >= k on its own: that more users anywhere never coarsen any place. A place
below k borrows users of its neighbours; when a neighbour reaches k on its own it is published
alone, and what is left may have to go one level up (docs/DECISIONS.md gives the three-window
argument). An H3 cell's children do not tile it exactly on the ground; membership in a region is
by the index hierarchy (``cell_to_parent``), as for the cell rule.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import h3

from anonymizers.kanon import KAnonParams, _check_base_cells

REMAINDER = "rest"


@dataclass(frozen=True, slots=True)
class RegionCount:
    """One published location aggregate: a region of H3 cells and its distinct-user count.

    ``cell`` is the H3 cell the region lies in and ``resolution`` its resolution; for a
    single-cell region ``members == (cell,)`` and ``region == cell``. For a remainder,
    ``members`` are the cells of ``cell`` outside the regions published inside it.
    """

    region: str
    cell: str
    resolution: int
    members: tuple[str, ...]
    users: int

    @property
    def area_km2(self) -> float:
        """Area of the region on the ground (sum of its member cells' areas)."""
        return sum(h3.cell_area(m, unit="km^2") for m in self.members)


def region_id(cell: str, whole: bool) -> str:
    """The id of the region published at ``cell``: the cell itself, or ``<cell>-rest`` for a remainder
    (``<cell>-rest-<i>`` when the remainder is published as several groups)."""
    return cell if whole else f"{cell}-{REMAINDER}"


def publish_regions(
    users_by_cell: Mapping[str, set | frozenset], params: KAnonParams = KAnonParams()
) -> list[RegionCount]:
    """Publish k-anonymous, disjoint regions (cells and remainders) from base-resolution user sets."""
    _check_base_cells(users_by_cell.keys(), params.base_resolution)
    base, coarsest, k = params.base_resolution, params.coarsest_resolution, params.k

    published: list[RegionCount] = []
    members_of: list[frozenset] = []  # the users of each published region
    covered: set[str] = set()  # cells where a region was published: all of them is covered
    partly: set[str] = set()  # cells with a published region somewhere inside (or at) them

    def publish(cell: str, res: int, groups: list[tuple[frozenset, list[str]]]) -> None:
        """Publish the region(s) of cell: one per group of children (users, children), the last takes the rest."""
        if len(groups) == 1 and cell not in partly:
            published.append(RegionCount(cell, cell, res, (cell,), len(groups[0][0])))
            members_of.append(groups[0][0])
        else:
            grouped = {child for _, children in groups for child in children}
            rest = [c for c in h3.cell_to_children(cell, res + 1) if c not in grouped]
            for i, (users, children) in enumerate(groups, start=1):
                parts = children + rest if i == len(groups) else children
                members = tuple(sorted(m for c in parts for m in _uncovered_part(c, res + 1, covered, partly)))
                region = region_id(cell, False) + (f"-{i}" if len(groups) > 1 else "")
                published.append(RegionCount(region, cell, res, members, len(users)))
                members_of.append(users)
        covered.add(cell)
        partly.add(cell)

    leftover: dict[str, tuple[frozenset, list[str]]] = {}  # cell -> (its leftover users, their base cells)
    for cell, users in users_by_cell.items():
        if not users:
            continue
        if len(users) >= k:
            publish(cell, base, [(frozenset(users), [])])
        else:
            leftover[cell] = (frozenset(users), [cell])
    for res in range(base - 1, coarsest - 1, -1):
        gathered: dict[str, list[tuple[str, frozenset, list[str]]]] = defaultdict(list)
        for cell, (users, cells) in leftover.items():
            gathered[h3.cell_to_parent(cell, res)].append((cell, users, cells))
        # Cells of this resolution with a region inside: parents of those one level finer.
        partly |= {h3.cell_to_parent(cell, res) for cell in partly if h3.get_resolution(cell) == res + 1}
        leftover = {}
        for cell in sorted(gathered):
            kids = sorted(gathered[cell])
            users = frozenset().union(*(u for _, u, _ in kids))
            if len(users) >= k:
                publish(cell, res, _groups(kids, k))
            else:
                leftover[cell] = (users, [c for _, _, cells in kids for c in cells])
    for top in sorted(leftover):
        _rescue(top, *leftover[top], published, members_of, base)
    published.sort(key=lambda row: (row.resolution, row.region))
    return published


def _groups(kids: list[tuple[str, frozenset, list[str]]], k: int) -> list[tuple[frozenset, list[str]]]:
    """Children's leftovers, in H3 order, gathered into groups of >= k users; a short last group joins the one before."""
    groups: list[tuple[frozenset, list[str]]] = []
    users: frozenset = frozenset()
    children: list[str] = []
    for child, child_users, _ in kids:
        users, children = users | child_users, children + [child]
        if len(users) >= k:
            groups.append((users, children))
            users, children = frozenset(), []
    if children:
        last_users, last_children = groups.pop()
        groups.append((last_users | users, last_children + children))
    return groups


def _uncovered_part(cell: str, res: int, covered: set[str], partly: set[str]) -> list[str]:
    """The fewest H3 cells whose union is the part of ``cell`` outside the published regions."""
    if cell in covered:
        return []
    return _uncovered(cell, res, covered, partly) if cell in partly else [cell]


def _rescue(top: str, users: frozenset, cells: list[str], published: list[RegionCount],
            members_of: list[frozenset], base: int) -> None:
    """Merge a coarsest cell's leftover (below k) into a published region there, or leave it suppressed.

    The region chosen is the one, other than a lone base cell, whose union with the leftover lies
    in the finest H3 cell (then the fewest users, then the id); that cell's region replaces it.
    """
    coarsest = h3.get_resolution(top)
    best = None
    for i, row in enumerate(published):
        if row.resolution == base or h3.cell_to_parent(row.cell, coarsest) != top:
            continue
        res = row.resolution - 1
        while any(h3.cell_to_parent(c, res) != h3.cell_to_parent(row.cell, res) for c in cells):
            res -= 1
        key = (-res, row.users, row.region)
        if best is None or key < best[0]:
            best = (key, i, h3.cell_to_parent(row.cell, res), res)
    if best is None:
        return  # only lone base cells (or nothing) published here: the leftover is suppressed
    _, i, cell, res = best
    inside = set()
    for j, row in enumerate(published):
        if j != i and row.resolution > res and h3.cell_to_parent(row.cell, res) == cell:
            inside |= _base_cells(row.members, base)
    place = _base_cells([cell], base) - inside
    members = tuple(sorted(h3.compact_cells(sorted(place))))
    merged = members_of[i] | users
    published[i] = RegionCount(region_id(cell, members == (cell,)), cell, res, members, len(merged))
    members_of[i] = merged


def _base_cells(cells, base: int) -> set[str]:
    """Every base cell under the given cells."""
    out: set[str] = set()
    for c in cells:
        out |= {c} if h3.get_resolution(c) == base else set(h3.cell_to_children(c, base))
    return out


def _uncovered(cell: str, res: int, covered: set[str], partly: set[str]) -> list[str]:
    """The fewest H3 cells whose union is ``cell`` minus the published regions inside it."""
    out: list[str] = []
    for child in h3.cell_to_children(cell, res + 1):
        if child in covered:
            continue
        if child in partly:
            out.extend(_uncovered(child, res + 1, covered, partly))
        else:
            out.append(child)
    return out
