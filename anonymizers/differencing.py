"""A differencing attacker: which small groups do sums and differences of published counts isolate?

Independent of how regions are chosen (it reads only what a partner reads: each published
region's member cells and count), so that tests can hold any publication rule to it.

The attacker's derivations, for one window. ``A`` and ``B`` are disjoint sets of published
regions, the regions within ``A`` pairwise disjoint on the ground, those within ``B`` too, and
every place of ``B`` inside the places of ``A``. Then ``sum n(A) - sum n(B)``:

* is exactly ``|U(A) \\ U(B)|`` when nobody was in two regions of ``A`` or two of ``B`` (always
  for one region in each: ``U(B) <= U(A)``). A partner may assume so; the worst case is taken.
  The group it isolates is ``G = U(A) \\ U(B)``: the users seen in ``A``'s places outside ``B``'s
  and never in ``B``'s. ``B`` empty and one region in ``A`` is the count itself.
* It is an *isolation* when the places ``A \\ B`` are not empty and ``0 <= |G| < k``: fewer than k
  users (or none: that nobody else was there is disclosed too).

Every derivation is considered, up to one reduction: adding a region to ``A`` only grows ``G``
(``U(A)`` grows, ``U(B)`` does not), so for each ``B`` it suffices to try the sets ``A`` made of
regions that meet ``B``'s places and cover them, plus (when those cover exactly ``B``'s places and
leave ``A \\ B`` empty) each such ``A`` with one more region. With ``B`` empty, single regions.

Not modelled: knowledge from outside the window's publication (other windows, a grand total of
opted-in users, accounts the partner controls); counts published with noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import h3

MAX_DIFFERENCE_TERMS = 16


@dataclass(frozen=True, slots=True)
class PublishedArea:
    """What a partner reads of one published region: its id, member H3 cells and count."""

    region: str
    members: tuple[str, ...]
    users: int


@dataclass(frozen=True, slots=True)
class Isolation:
    """A sum of published counts minus another that counts a group of fewer than k users."""

    plus: tuple[str, ...]  # region ids summed
    minus: tuple[str, ...]  # region ids subtracted
    cells: frozenset[str]  # base cells of the places A \\ B
    users: int  # |G|, the size of the group isolated


def find_isolations(
    published: Sequence[PublishedArea], users_by_cell: Mapping[str, Iterable], k: int
) -> list[Isolation]:
    """Every derivation over the published regions that isolates fewer than k users (see module)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k={k!r} must be an integer >= 2")
    if not published:
        return []
    resolutions = {h3.get_resolution(c) for c in users_by_cell}
    if len(resolutions) > 1:
        raise ValueError(f"users_by_cell mixes resolutions {sorted(resolutions)}")
    base = resolutions.pop() if resolutions else max(h3.get_resolution(m) for p in published for m in p.members)

    # Places and users as bit sets: bit i of a place mask is base cell i, bit j of a user mask is user j.
    cell_bit: dict[str, int] = {}
    user_bit: dict[object, int] = {}
    users_of_cell: dict[int, int] = {}
    for cell, users in users_by_cell.items():
        mask = 0
        for u in users:
            mask |= 1 << user_bit.setdefault(u, len(user_bit))
        users_of_cell[cell_bit.setdefault(cell, len(cell_bit))] = mask
    places, people = [], []
    for area in published:
        place = 0
        for member in area.members:
            res = h3.get_resolution(member)
            if res > base:
                raise ValueError(f"member cell {member!r} of {area.region!r} is finer than the base resolution {base}")
            for cell in (member,) if res == base else h3.cell_to_children(member, base):
                place |= 1 << cell_bit.setdefault(cell, len(cell_bit))
        places.append(place)
        people.append(_users_in(place, users_of_cell))
    cells_of = {bit: cell for cell, bit in cell_bit.items()}
    n = len(published)
    found: list[Isolation] = []

    def check(a: list[int], b: list[int]) -> None:
        place = _union(places, a) & ~_union(places, b)
        group = _union(people, a) & ~_union(people, b)
        if place and group.bit_count() < k:
            found.append(Isolation(tuple(published[i].region for i in a), tuple(published[i].region for i in b),
                                   frozenset(cells_of[i] for i in _bits(place)), group.bit_count()))

    for i in range(n):
        check([i], [])
    # Only a region whose places lie inside the union of the others can ever be subtracted.
    others = [_union(places, [j for j in range(n) if j != i]) for i in range(n)]
    subtractable = [i for i in range(n) if places[i] & ~others[i] == 0]
    if len(subtractable) > MAX_DIFFERENCE_TERMS:
        raise ValueError(f"{len(subtractable)} regions lie inside others: too many to try every difference "
                         f"(at most {MAX_DIFFERENCE_TERMS})")
    for b in _disjoint_subsets(subtractable, places):
        if not b:
            continue
        b_place = _union(places, b)
        meeting = [i for i in range(n) if i not in b and places[i] & b_place]
        for a in _disjoint_subsets(meeting, places):
            a_place = _union(places, a)
            if not a or b_place & ~a_place:
                continue  # A must cover B's places
            if a_place & ~b_place:
                check(a, b)
            else:  # A \ B is empty: one more region gives a place
                for extra in range(n):
                    if extra not in a and extra not in b and places[extra] & a_place == 0:
                        check(a + [extra], b)
    return found


def _union(masks: list[int], indices: Iterable[int]) -> int:
    out = 0
    for i in indices:
        out |= masks[i]
    return out


def _bits(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _users_in(place: int, users_of_cell: dict[int, int]) -> int:
    out = 0
    for bit in _bits(place):
        out |= users_of_cell.get(bit, 0)
    return out


def _disjoint_subsets(candidates: list[int], places: list[int]) -> Iterable[list[int]]:
    """Every subset of candidates whose places are pairwise disjoint (the empty one first)."""
    def grow(start: int, chosen: list[int], mask: int):
        yield chosen
        for j in range(start, len(candidates)):
            i = candidates[j]
            if places[i] & mask == 0:
                yield from grow(j + 1, chosen + [i], mask | places[i])
    yield from grow(0, [], 0)
