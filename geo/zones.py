"""Sensitive zones (health, religion, ...) where no crossing may be located."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import shape

SAMPLE_ZONES_PATH = Path(__file__).parent / "data" / "zones-paris-sample.geojson"


@dataclass(frozen=True)
class SensitiveZones:
    """A set of polygons in lon/lat (GeoJSON axis order) with their names."""

    geometry: object | None = None  # one prepared (Multi)Polygon, or None when empty
    names: tuple[str, ...] = ()
    bounds: tuple[float, float, float, float] | None = field(default=None, repr=False)

    @classmethod
    def empty(cls) -> "SensitiveZones":
        """No zones at all."""
        return cls()

    @classmethod
    def from_geometries(cls, geoms, names=()) -> "SensitiveZones":
        """Zones from shapely (Multi)Polygons in lon/lat."""
        geoms = list(geoms)
        if not geoms:
            return cls.empty()
        for g in geoms:
            if g.geom_type not in ("Polygon", "MultiPolygon"):
                raise ValueError(f"zone geometry type={g.geom_type!r} is not Polygon or MultiPolygon")
        union = shapely.union_all(geoms)
        shapely.prepare(union)
        return cls(union, tuple(names), tuple(float(b) for b in union.bounds))

    @classmethod
    def from_geojson(cls, path) -> "SensitiveZones":
        """Zones from a GeoJSON FeatureCollection of Polygon/MultiPolygon features with a "name"."""
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if doc.get("type") != "FeatureCollection":
            raise ValueError(f"type={doc.get('type')!r} in {path} is not 'FeatureCollection'")
        geoms, names = [], []
        for i, feat in enumerate(doc.get("features", [])):
            geom = shape(feat["geometry"])
            if not geom.is_valid:
                raise ValueError(f"feature {i} ({(feat.get('properties') or {}).get('name')!r}) in {path} is not a valid polygon")
            geoms.append(geom)
            names.append(str((feat.get("properties") or {}).get("name", f"zone-{i}")))
        return cls.from_geometries(geoms, names)

    @classmethod
    def paris_sample(cls) -> "SensitiveZones":
        """The shipped sample zones around a few Paris hospitals and places of worship."""
        return cls.from_geojson(SAMPLE_ZONES_PATH)

    def __bool__(self) -> bool:
        return self.geometry is not None

    def contains(self, lat, lon):
        """Whether each point (degrees) lies inside or on the border of a zone (floats or arrays)."""
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        if self.geometry is None:
            out = np.zeros(np.broadcast(lat, lon).shape, dtype=bool)
        else:
            minx, miny, maxx, maxy = self.bounds
            lat_b, lon_b = np.broadcast_arrays(lat, lon)
            out = np.zeros(lat_b.shape, dtype=bool)
            near = (lon_b >= minx) & (lon_b <= maxx) & (lat_b >= miny) & (lat_b <= maxy)
            if near.any():
                out[near] = shapely.intersects_xy(self.geometry, lon_b[near], lat_b[near])
        return bool(out) if out.ndim == 0 else out
