"""Pictures for analysts: maps of published partner-statistics regions, readable offline.

No basemap is fetched: the geographic context is bundled here (the simulated city's outline,
an approximate course of the Seine and a few labelled Paris landmarks), drawn under the regions.
"""
from __future__ import annotations

import math
from pathlib import Path

import h3
import numpy as np

from streams.tools.simulator import CITY_BBOX

# (name, lat, lon): well-known places, to find one's way on a map of Paris.
LANDMARKS = [
    ("Tour Eiffel", 48.8584, 2.2945), ("Arc de Triomphe", 48.8738, 2.2950), ("Louvre", 48.8606, 2.3376),
    ("Notre-Dame", 48.8530, 2.3499), ("Sacré-Cœur", 48.8867, 2.3431), ("Gare du Nord", 48.8809, 2.3553),
    ("République", 48.8675, 2.3637), ("Bastille", 48.8532, 2.3692), ("Gare de Lyon", 48.8443, 2.3743),
    ("Nation", 48.8483, 2.3958), ("Place d'Italie", 48.8310, 2.3556), ("Montparnasse", 48.8421, 2.3219),
]
# The Seine through Paris, west to east, roughly (lat, lon).
SEINE = [(48.8350, 2.2560), (48.8480, 2.2720), (48.8590, 2.2880), (48.8640, 2.3050), (48.8620, 2.3270),
         (48.8580, 2.3420), (48.8535, 2.3530), (48.8470, 2.3650), (48.8390, 2.3760), (48.8300, 2.3890),
         (48.8220, 2.4100)]
CMAP = "magma_r"


def render_cells(frame, output: Path, title: str) -> Path:
    """Draw one window's regions (columns members or cell, users, resolution, k) as a PNG map with a legend."""
    plt, _, _ = _pyplot()
    from matplotlib.colors import Normalize

    fig, ax = plt.subplots(figsize=(10, 8.5), dpi=110)
    norm = Normalize(vmin=0, vmax=max(1, frame["users"].max()))
    coll = _draw(ax, frame, norm, labels=True, limits=_limits(frame))
    remainders = sum(len(list(m)) > 1 for m in _members(frame))
    by_res = ", ".join(f"res {r}: {n}" for r, n in frame["resolution"].value_counts().sort_index().items())
    ax.set_title(f"{title}\n{len(frame)} {_kind(frame)} ({by_res}; {remainders} remainders); k = {int(frame['k'].iloc[0])}",
                 fontsize=10)
    _legend(ax)
    fig.colorbar(coll, ax=ax, shrink=0.8, label=_scale_label(frame))
    return _save(fig, output)


def render_day(frame, output: Path, title: str) -> Path:
    """Draw every window of `frame` (one day) as small multiples on one colour scale, as a PNG."""
    plt, _, _ = _pyplot()
    from matplotlib.colors import Normalize

    windows = sorted(frame["window_start"].unique())
    cols = min(6, len(windows))
    rows = math.ceil(len(windows) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, 2.9 * cols + 1.0), 2.4 * rows + 0.9), dpi=100,
                             squeeze=False, layout="constrained")
    norm = Normalize(vmin=0, vmax=max(1, frame["users"].max()))
    limits = _limits(frame)  # the same frame for every window
    coll = None
    for ax, ws in zip(axes.flat, windows):
        sub = frame[frame["window_start"] == ws]
        coll = _draw(ax, sub, norm, labels=False, limits=limits)
        ax.set_title(f"{ws:%H:%M}  {len(sub)} {_kind(sub)}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax in list(axes.flat)[len(windows):]:
        ax.axis("off")
    fig.suptitle(f"{title}: {len(windows)} windows, k = {int(frame['k'].iloc[0])}\ndashed: the simulated city, "
                 "blue: the Seine (approximate); remainders outlined; places below k not shown", fontsize=9)
    fig.colorbar(coll, ax=axes, shrink=0.6, label=_scale_label(frame))
    return _save(fig, output, tight=False)


def _noisy(frame) -> bool:
    """Whether the rows are differentially private noisy cells (CROSSPATHS_DP_EPSILON)."""
    return "noisy" in frame.columns and bool(frame["noisy"].fillna(False).astype(bool).any())


def _kind(frame) -> str:
    return "noisy cells" if _noisy(frame) else "regions"


def _scale_label(frame) -> str:
    if _noisy(frame):
        return "noisy users (DP, shown from k)"
    return "distinct users in the region (published, ≥ k)"


def _pyplot():
    import matplotlib  # here, not at import: matplotlib writes its font cache on first import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    return plt, matplotlib, PolyCollection


def _members(frame) -> list[list[str]]:
    if "members" in frame.columns:
        return [list(m) for m in frame["members"]]
    return [[c] for c in frame["cell"]]


def _limits(frame) -> tuple[float, float, float, float]:
    """(lon0, lon1, lat0, lat1) around the city and the regions of resolution >= 7 (coarse ones may be cut)."""
    lat0, lon0, lat1, lon1 = CITY_BBOX
    for cells, res in zip(_members(frame), frame["resolution"]):
        if res >= 7:
            for c in cells:
                lat, lon = h3.cell_to_latlng(c)
                lat0, lat1, lon0, lon1 = min(lat0, lat), max(lat1, lat), min(lon0, lon), max(lon1, lon)
    pad_lat, pad_lon = (lat1 - lat0) * 0.08, (lon1 - lon0) * 0.08
    return lon0 - pad_lon, lon1 + pad_lon, lat0 - pad_lat, lat1 + pad_lat


def _draw(ax, frame, norm, labels: bool, limits: tuple[float, float, float, float]):
    """The context, then the regions (member cells filled by count, remainders outlined); the filled collection."""
    _, _, PolyCollection = _pyplot()
    polys, values, outlines = [], [], []
    for cells, users in zip(_members(frame), frame["users"]):
        polys += [[(lng, lat) for lat, lng in h3.cell_to_boundary(c)] for c in cells]
        values += [users] * len(cells)
        if len(cells) > 1:  # a remainder: its outer boundary, so that it reads as one region
            outlines += _outlines(cells)
    coll = PolyCollection(polys, array=np.asarray(values), cmap=CMAP, norm=norm, edgecolors="#bbbbbb",
                          linewidths=0.2, alpha=0.85, zorder=2)
    ax.add_collection(coll)
    ax.add_collection(PolyCollection(outlines, facecolors="none", edgecolors="#222222", linewidths=0.8, zorder=3))
    lat0, lon0, lat1, lon1 = CITY_BBOX
    ax.plot([lon0, lon1, lon1, lon0, lon0], [lat0, lat0, lat1, lat1, lat0], ls="--", color="#333333", lw=0.9,
            zorder=5)
    ax.plot([p[1] for p in SEINE], [p[0] for p in SEINE], color="#2166ac", lw=2.2, alpha=0.7, zorder=5)
    x0, x1, y0, y1 = limits
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    if labels:
        for name, lat, lon in LANDMARKS:
            if x0 <= lon <= x1 and y0 <= lat <= y1:
                ax.plot(lon, lat, marker="^", color="#1b7837", ms=4, zorder=6)
                ax.annotate(name, (lon, lat), xytext=(3, 3), textcoords="offset points", fontsize=7,
                            color="#0b2e17", zorder=6, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none",
                                                                 alpha=0.6))
    ax.set_aspect(1 / math.cos(math.radians((y0 + y1) / 2)))
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.grid(True, color="#eeeeee", linewidth=0.5)
    ax.set_axisbelow(True)
    return coll


def _legend(ax) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(handles=[
        Patch(facecolor="#f4a582", edgecolor="#bbbbbb", label="a region: one H3 cell"),
        Patch(facecolor="#f4a582", edgecolor="#222222", label="a remainder: a cell minus the regions inside it"),
        Line2D([], [], ls="--", color="#333333", label="the simulated city (Paris inside the ring road)"),
        Line2D([], [], color="#2166ac", lw=2, alpha=0.7, label="the Seine (approximate)"),
        Line2D([], [], marker="^", color="#1b7837", ls="", label="landmark"),
    ], loc="lower left", fontsize=7, framealpha=0.9, title="not shown: places below k; coarse regions may\n"
       "extend past the frame", title_fontsize=7)


def _save(fig, output: Path, tight: bool = True) -> Path:
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output


def _outlines(cells: list[str]) -> list[list[tuple[float, float]]]:
    """The boundary loops (lng, lat) of a set of cells drawn as one shape, holes included."""
    finest = max(h3.get_resolution(c) for c in cells)
    geo = h3.cells_to_geo(h3.uncompact_cells(cells, finest))  # one resolution; GeoJSON: (lng, lat) pairs
    polygons = [geo["coordinates"]] if geo["type"] == "Polygon" else geo["coordinates"]
    return [list(loop) for polygon in polygons for loop in polygon]
