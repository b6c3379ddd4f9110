"""Utility of the partner-statistics map (issue 19, not CI): the cell rule, the region rule, a Mondrian baseline.

One window (one hour) of opted-in (user, base cell) memberships, published three ways at the same k:
  cells     today's rule until issue 19 (anonymizers.kanon.generalize_cells: split only when every child has >= k)
  regions   the pipeline's rule (anonymizers.regions.publish_regions: cells with >= k and remainders)
  mondrian  bench/mondrian.py: median cuts of the window's cells into boxes of >= k users
  dp        anonymizers.dp.publish_noisy_cells (CROSSPATHS_DP_EPSILON mode): noisy cells at --dp-resolution over
            the (epsilon, delta) threshold, each user in at most --dp-cells of them (one-cell regions)
and measured with anonymizers.utility.measure_utility, the differencing attacker
(anonymizers.differencing.find_isolations) run on each publication.

Workloads (fixed, deterministic per seed):
  places  the issue's shape: 1,500 users, 60 places drawn uniformly inside Paris's ring road, 60 % partner
          opt-in; each opted-in user spends the hour at 1-4 of the places, one ping every 10 minutes
          scattered N(0, 250 m) around the place (about 4,900 memberships at resolution 9, the issue
          counted 4,247 on its own).
  city    the demo's simulated city (streams/tools/simulator.py: homes anywhere, commutes and walks between
          60 places), 1,500 users, 60 % opt-in, one full hour, replayed through the core's consent rules.

Usage:
    .venv/bin/python bench/bench_regions.py                     # both workloads, seeds 1-3 for places
    .venv/bin/python bench/bench_regions.py --workload places --seeds 1 --k 5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import h3
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anonymizers.differencing import PublishedArea, find_isolations  # noqa: E402
from anonymizers.dp import DPParams, publication_threshold, publish_noisy_cells  # noqa: E402
from anonymizers.kanon import KAnonParams, generalize_cells  # noqa: E402
from anonymizers.regions import RegionCount, publish_regions  # noqa: E402
from anonymizers.utility import measure_utility  # noqa: E402
from mondrian import mondrian_boxes  # noqa: E402
from streams.tools.simulator import CITY_BBOX, M_PER_DEG_LAT, SimulationParams, partner_memberships  # noqa: E402

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, on the hour


def places_window(seed: int, users: int = 1500, places: int = 60, opt_in: float = 0.6,
                  sigma_m: float = 250.0, pings: int = 6) -> dict[str, set[str]]:
    """The issue's shape: opted-in users at 1-4 of 60 places for one hour, pings scattered around them."""
    rng = np.random.default_rng(seed)
    lat0, lon0, lat1, lon1 = CITY_BBOX
    spots = np.column_stack([rng.uniform(lat0, lat1, places), rng.uniform(lon0, lon1, places)])
    window: dict[str, set[str]] = {}
    for u in range(users):
        if rng.random() >= opt_in:
            continue
        visits = rng.choice(places, size=int(rng.integers(1, 5)), replace=False)
        for t in range(pings):
            lat, lon = spots[visits[t * len(visits) // pings]]
            lat += rng.normal(0, sigma_m) / M_PER_DEG_LAT
            lon += rng.normal(0, sigma_m) / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
            window.setdefault(h3.latlng_to_cell(lat, lon, 9), set()).add(f"user-{u}")
    return window


def city_window(seed: int, users: int = 1500) -> dict[str, set[str]]:
    """One full hour of the simulated city, opted-in memberships as the core's rules decide them."""
    params = SimulationParams(users=users, hours=1.0, start=START, seed=seed, partner_opt_in_share=0.6,
                              malformed_share=0.0)
    return partner_memberships(params, KAnonParams())[START]


def publish_all(window: dict, k: int, dp: DPParams) -> dict[str, tuple[list, float]]:
    """Each method's publication of the window, and its run time in seconds."""
    params = KAnonParams(k=k)
    out = {}
    t = time.perf_counter()
    cells = [RegionCount(r.cell, r.cell, r.resolution, (r.cell,), r.users) for r in generalize_cells(window, params)]
    out["cells"] = (cells, time.perf_counter() - t)
    t = time.perf_counter()
    out["regions"] = (publish_regions(window, params), time.perf_counter() - t)
    t = time.perf_counter()
    out["mondrian"] = (mondrian_boxes(window, k), time.perf_counter() - t)
    t = time.perf_counter()
    noisy = publish_noisy_cells(window, dp, k, np.random.default_rng(0))
    seconds = time.perf_counter() - t
    out["dp"] = ([RegionCount(r.cell, r.cell, r.resolution, (r.cell,), r.users) for r in noisy], seconds)
    return out


def isolations(rows: list, window: dict, k: int) -> int:
    """How many derivations the differencing attacker finds (0 for any disjoint publication of >= k)."""
    areas = [PublishedArea(getattr(r, "region", None) or "|".join(r.members[:1]), tuple(r.members), r.users)
             for r in rows]
    return len(find_isolations(areas, window, k))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["places", "city", "both"], default="both")
    p.add_argument("--seeds", default="1,2,3", help="seeds of the places workload (the city uses seed 7)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dp-epsilon", type=float, default=1.0, help="epsilon of the dp method (per window)")
    p.add_argument("--dp-cells", type=int, default=4, help="cells per user of the dp method (the setting's default)")
    p.add_argument("--dp-resolution", type=int, default=7,
                   help="H3 resolution of the dp method's cells (the setting's default)")
    p.add_argument("--json", action="store_true", help="also print every measure as JSON")
    args = p.parse_args()
    dp = DPParams(epsilon=args.dp_epsilon, max_cells_per_user=args.dp_cells, resolution=args.dp_resolution)
    print(f"dp: epsilon {dp.epsilon:g}, delta {dp.delta:g}, {dp.max_cells_per_user} res-{dp.resolution} cells "
          f"per user -> threshold {max(args.k, publication_threshold(dp))}")
    runs = []
    if args.workload in ("places", "both"):
        runs += [(f"places seed {s}", places_window(int(s))) for s in args.seeds.split(",")]
    if args.workload in ("city", "both"):
        runs.append(("city seed 7", city_window(7)))
    results = []
    for name, window in runs:
        published = publish_all(window, args.k, dp)
        print(f"\n== {name}: k = {args.k}")
        measures = {}
        for method, (rows, seconds) in published.items():
            m = measure_utility(rows, window)
            measures[method] = m
            # Noisy counts are not the true counts the attacker checks against: no attacker line for dp.
            attack = "" if method == "dp" else f"; attacker isolations {isolations(rows, window, args.k)}"
            print(f"  {method:<9} {m.line(args.k)}{attack}; {seconds * 1000:.0f} ms")
        cells, regions = measures["cells"], measures["regions"]
        ratio = regions.regions / max(1, cells.regions)
        print(f"  targets: regions / cells = {ratio:.1f}x (>= 5x: {'yes' if ratio >= 5 else 'NO'}), "
              f"memberships at res >= 7 = {regions.at_res7:.0%} (>= 50%: {'yes' if regions.at_res7 >= 0.5 else 'NO'})")
        results.append({"workload": name, "k": args.k,
                        **{method: {f: getattr(m, f) for f in m.__slots__} for method, m in measures.items()}})
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
