"""The declared service area: the data-independent set of H3 cells differentially private counts cover.

Why a declared set: when the cells to publish are taken from the data, a lone user's cell exists
only because of that user, and hiding it costs a threshold derived from delta (``dp.py``). Over a
set fixed before any data is seen (the service area, at the fixed DP resolution), every cell of
the set gets a noisy count in every window, whether or not anyone was there; the guarantee is then
pure epsilon-DP, and dropping noisy counts below k is post-processing that costs no privacy.

An operator declares the area as a GeoJSON file (Polygon, MultiPolygon, Feature or
FeatureCollection of them, lon/lat): every cell at the resolution that overlaps it is in the area.
Or as a text file of H3 cells, one per line (``#`` starts a comment): each cell at the resolution,
or a coarser one standing for all its descendants at the resolution.

Guarantees the tests hold: the area's cells are all at ``resolution``, the area is not empty and
has at most ``MAX_CELLS`` cells (the worker counts and draws noise for each of them every window).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h3

MAX_CELLS = 200_000


@dataclass(frozen=True)
class ServiceArea:
    """A non-empty set of H3 cells at one resolution, declared before any data is seen."""

    cells: frozenset[str]
    resolution: int

    def __post_init__(self) -> None:
        r = self.resolution
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 15:
            raise ValueError(f"resolution={r!r} must be an integer in [0, 15]")
        if not self.cells:
            raise ValueError("the service area has no cell: declare at least one")
        if len(self.cells) > MAX_CELLS:
            raise ValueError(f"the service area has {len(self.cells)} cells at resolution {r}, more than "
                             f"{MAX_CELLS}: declare a smaller area or a coarser resolution")
        for cell in self.cells:
            if not h3.is_valid_cell(cell):
                raise ValueError(f"cell={cell!r} is not a valid H3 cell")
            if h3.get_resolution(cell) != r:
                raise ValueError(f"cell={cell!r} has resolution {h3.get_resolution(cell)}, not {r}")

    @classmethod
    def from_cells(cls, cells: Iterable[str], resolution: int) -> "ServiceArea":
        """The area of these cells: each at the resolution, or coarser (standing for its descendants there)."""
        out: set[str] = set()
        for cell in cells:
            if not isinstance(cell, str) or not h3.is_valid_cell(cell):
                raise ValueError(f"cell={cell!r} is not a valid H3 cell")
            res = h3.get_resolution(cell)
            if res > resolution:
                raise ValueError(f"cell={cell!r} has resolution {res}, finer than resolution={resolution}")
            out.update([cell] if res == resolution else h3.cell_to_children(cell, resolution))
            if len(out) > MAX_CELLS:
                break  # __post_init__ names the limit
        return cls(frozenset(out), resolution)

    @classmethod
    def from_geojson(cls, doc: dict, resolution: int) -> "ServiceArea":
        """The cells at the resolution that overlap a GeoJSON (Multi)Polygon, Feature or FeatureCollection."""
        cells: set[str] = set()
        for i, geometry in enumerate(_geometries(doc)):
            if geometry.get("type") not in ("Polygon", "MultiPolygon"):
                raise ValueError(f"geometry {i} type={geometry.get('type')!r} is not Polygon or MultiPolygon")
            shape = h3.geo_to_h3shape(geometry)
            cells.update(h3.h3shape_to_cells_experimental(shape, resolution, contain="overlap"))
            if len(cells) > MAX_CELLS:
                break
        return cls(frozenset(cells), resolution)

    @classmethod
    def from_file(cls, path: str | Path, resolution: int) -> "ServiceArea":
        """The area declared in a file: GeoJSON (.geojson, .json) or a list of H3 cells (anything else)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"service area file {path} cannot be read: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() in (".geojson", ".json"):
                return cls.from_geojson(json.loads(text), resolution)
            lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
            return cls.from_cells([line for line in lines if line], resolution)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"service area file {path}: {exc}") from None

    def by_ancestor(self, resolution: int) -> dict[str, frozenset[str]]:
        """The area's cells grouped by their ancestor at a coarser (or equal) resolution."""
        if not 0 <= resolution <= self.resolution:
            raise ValueError(f"resolution={resolution} must be in [0, {self.resolution}]")
        groups: dict[str, set[str]] = defaultdict(set)
        for cell in self.cells:
            groups[h3.cell_to_parent(cell, resolution)].add(cell)
        return {parent: frozenset(cells) for parent, cells in groups.items()}

    @property
    def area_km2(self) -> float:
        """Total area of the cells."""
        return sum(h3.cell_area(c, unit="km^2") for c in self.cells)


def _geometries(doc: dict) -> list[dict]:
    """The geometries of a GeoJSON object (a geometry, a Feature or a FeatureCollection)."""
    if not isinstance(doc, dict):
        raise ValueError(f"GeoJSON of type {type(doc).__name__} is not an object")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        features = doc.get("features") or []
        if not features:
            raise ValueError("the FeatureCollection has no feature")
        return [f.get("geometry") or {} for f in features]
    if kind == "Feature":
        return [doc.get("geometry") or {}]
    return [doc]
