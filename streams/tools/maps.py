"""Pictures for analysts: a heatmap of one window's published H3 cells (no basemap needed)."""
from __future__ import annotations

import math
from pathlib import Path

import h3


def render_cells(frame, output: Path, title: str) -> Path:
    """Draw the cells of `frame` (columns cell, users, resolution) coloured by distinct users, as a PNG."""
    import matplotlib  # here, not at import: matplotlib writes its font cache on first import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize

    polys = [[(lng, lat) for lat, lng in h3.cell_to_boundary(c)] for c in frame["cell"]]
    fig, ax = plt.subplots(figsize=(9, 8), dpi=110)
    norm = Normalize(vmin=0, vmax=max(1, frame["users"].max()))
    coll = PolyCollection(polys, array=frame["users"].to_numpy(), cmap="magma_r", norm=norm,
                          edgecolors="#444444", linewidths=0.4)
    ax.add_collection(coll)
    ax.autoscale_view()
    lat_mid = sum(ax.get_ylim()) / 2
    ax.set_aspect(1 / math.cos(math.radians(lat_mid)))
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.grid(True, color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    res_counts = frame["resolution"].value_counts().sort_index()
    legend = ", ".join(f"res {r}: {n} cells" for r, n in res_counts.items())
    ax.set_title(f"{title}\n{legend}; k = {int(frame['k'].iloc[0])}, suppressed cells not shown", fontsize=10)
    fig.colorbar(coll, ax=ax, shrink=0.8, label="distinct users (published, ≥ k)")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output
