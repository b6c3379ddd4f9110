"""Utility of differentially private partner statistics next to k alone, same windows, same run (issue 19, not CI).

One window (one hour) of opted-in (user, base cell) memberships (bench_regions.py's workloads: `places`,
the issue's shape, and `city`, the demo's simulated city), published by:
  k-regions     anonymizers.regions.publish_regions: the pipeline's default (disjoint regions of >= k, exact)
  dp-select     anonymizers.dp.publish_noisy_cells without a domain: cells taken from the data, published
                from the (epsilon, delta) threshold (private partition selection, delta = 1e-6)
  dp-area r7/8  the same over a declared service area (geo/data/service-area-paris.geojson, the simulated
                city's box) at H3 resolution 7 or 8: every area cell gets a noisy count, published from k
DP methods run as the worker runs them with --partitions statistics partitions (default 4, the setting's
default): parameters, area and cells per partition from the worker's own streams.rules.dp_rules; each user
counted in their first m cells of the window at the DP resolution, inside the area (the ingest stage's bound,
anonymizers.dp.bound_in_order; a window here has no ping order, so each user's cells come in a seeded random
order), then the window split by stats partition (streams.rules.stats_partition). `--per-partition` runs
the worker before that bound: each statistics partition bounding a user on its own to max(1, m // shards)
cells, noise with the sensitivity of all of them (anonymizers.dp, "Shards").

Measures per method (anonymizers.utility.measure_utility, plus errors against the true counts):
  rows      regions / cells published in the window
  covered   share of memberships in a published region or cell
  km2       mean area (km²) of the region a published membership is counted in
  MAE       mean |published count - true distinct users in the region| over published rows (true: before
            the contribution bound)
  true      mean true count of the published rows (to read MAE against)
  below-k   published rows whose true count is below k (noise lifting a near-empty cell; DP only)
DP numbers are means over --draws noise draws.

Usage:
    .venv/bin/python bench/bench_dp.py                                 # epsilon 0.5, 1, 2, 4; both workloads
    .venv/bin/python bench/bench_dp.py --epsilons 1 --workload city --draws 5
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import h3
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anonymizers.dp import (DPParams, bound_in_order, privacy_budget, publication_threshold,  # noqa: E402
                            publish_noisy_cells)
from anonymizers.kanon import KAnonParams  # noqa: E402
from anonymizers.regions import RegionCount, publish_regions  # noqa: E402
from anonymizers.utility import measure_utility  # noqa: E402
from bench_regions import city_window, places_window  # noqa: E402
from streams.rules import dp_rules, stats_partition  # noqa: E402
from streams.settings import Settings  # noqa: E402

AREA = Path(__file__).resolve().parents[1] / "geo" / "data" / "service-area-paris.geojson"


def true_counts(window: dict[str, set]) -> dict[str, int]:
    """Distinct users of the window under each cell at resolutions 0-9 (the base cells and their ancestors)."""
    under: dict[str, set] = {}
    for cell, members in window.items():
        for r in range(h3.get_resolution(cell) + 1):
            under.setdefault(h3.cell_to_parent(cell, r), set()).update(members)
    return {cell: len(users) for cell, users in under.items()}


def true_count(row: RegionCount, counts: dict[str, int], window: dict[str, set]) -> int:
    """Distinct users of the window in the row's member cells (one-cell rows from the table)."""
    if len(row.members) == 1:
        return counts.get(row.members[0], 0)
    users: set = set()
    for cell, members in window.items():
        if any(h3.cell_to_parent(cell, h3.get_resolution(m)) == m for m in row.members
               if h3.get_resolution(m) <= h3.get_resolution(cell)):
            users |= members
    return len(users)


def ingest_bound(window: dict, params: DPParams, area, rng: np.random.Generator) -> dict[str, frozenset]:
    """The window as the statistics stage gets it from ingest: each user in their first m DP cells (inside the area)."""
    cells_of: dict = {}
    for cell in sorted(window):
        parent = h3.cell_to_parent(cell, params.resolution)
        if area is None or parent in area.cells:
            for user in window[cell]:
                cells_of.setdefault(user, set()).add(parent)
    visits = [(user, c) for user in sorted(cells_of) for c in rng.permutation(sorted(cells_of[user])).tolist()]
    return bound_in_order(visits, params.max_cells_per_user)


def publish_dp(window: dict, k: int, settings: Settings, rng: np.random.Generator,
               per_partition: bool = False) -> list[RegionCount]:
    """What the worker's statistics partitions publish together for the window (streams.rules.dp_rules)."""
    params, area, cells = dp_rules(settings)
    if per_partition:  # before the ingest bound: each partition bounds a user on its own
        params = replace(params, shards=len(cells) if area else settings.partitions)
    else:
        window = ingest_bound(window, params, area, rng)
    parts: dict[int, dict[str, set]] = {}
    for cell, users in window.items():
        parts.setdefault(stats_partition(cell, settings), {})[cell] = users
    rows = []
    for p in range(settings.partitions):
        domain = cells.get(p, frozenset()) if area is not None else None
        if domain != frozenset():  # as the stage: a partition holding no area cell publishes nothing
            rows += [RegionCount(c.cell, c.cell, c.resolution, (c.cell,), c.users)
                     for c in publish_noisy_cells(parts.get(p, {}), params, k, rng, domain)]
    return rows


def line(label: str, m: dict[str, float], note: str) -> str:
    """One row of the printout."""
    return (f"  {label:<24} {m['rows']:>6.1f} {m['covered']:>8.0%} {m['km2']:>6.2f} {m['mae']:>6.1f} {m['true']:>6.1f} "
            f"{m['below_k']:>8.1f}  {note}")


def measure(rows: list[RegionCount], window: dict, counts: dict[str, int], k: int) -> dict[str, float]:
    """The bench's measures of one publication."""
    u = measure_utility(rows, window)
    truth = [true_count(r, counts, window) for r in rows]
    errors = [abs(r.users - t) for r, t in zip(rows, truth)]
    return {"rows": len(rows), "covered": 1 - u.suppressed, "km2": u.mean_km2,
            "mae": sum(errors) / len(errors) if errors else 0.0,
            "true": sum(truth) / len(truth) if truth else 0.0, "below_k": sum(t < k for t in truth)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["places", "city", "both"], default="both")
    p.add_argument("--seeds", default="1,2,3", help="seeds of the places workload (the city uses seed 7)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--epsilons", default="0.5,1,2,4")
    p.add_argument("--m", type=int, default=4, help="cells per user and window (CROSSPATHS_DP_MAX_CELLS_PER_USER)")
    p.add_argument("--partitions", type=int, default=4, help="statistics partitions (CROSSPATHS_PARTITIONS)")
    p.add_argument("--draws", type=int, default=5, help="noise draws averaged per DP number")
    p.add_argument("--per-partition", action="store_true",
                   help="bound each user in each statistics partition (the worker before the ingest bound)")
    p.add_argument("--resolutions", default="7,8", help="DP resolutions of the area runs")
    args = p.parse_args()
    runs = []
    if args.workload in ("places", "both"):
        runs += [(f"places seed {s}", places_window(int(s))) for s in args.seeds.split(",")]
    if args.workload in ("city", "both"):
        runs.append(("city seed 7", city_window(7)))
    for name, window in runs:
        users = len(set().union(*window.values()))
        counts = true_counts(window)
        print(f"\n== {name}: {users} users, {sum(map(len, window.values()))} memberships at res 9, k = {args.k}")
        print(f"  {'method':<24} {'rows':>6} {'covered':>8} {'km2':>6} {'MAE':>6} {'true':>6} {'below-k':>8}  guarantee")
        m = measure(publish_regions(window, KAnonParams(k=args.k)), window, counts, args.k)
        print(line("k-regions", m, f"k = {args.k} per window, none against k - 1 known accounts"))
        for eps in [float(e) for e in args.epsilons.split(",")]:
            methods = [("dp-select r7", 7, None)] + [(f"dp-area r{r}", int(r), AREA) for r in args.resolutions.split(",")]
            for label, res, area in methods:
                settings = Settings(partitions=args.partitions, k=args.k, dp_epsilon=eps, dp_max_cells_per_user=args.m,
                                    dp_resolution=res, dp_domain=area)
                params = dp_rules(settings)[0]
                if args.per_partition:
                    params = replace(params, shards=len(dp_rules(settings)[2]) if area else settings.partitions)
                draws = [measure(publish_dp(window, args.k, settings, np.random.default_rng(d), args.per_partition),
                                 window, counts, args.k) for d in range(args.draws)]
                mean = {f: sum(d[f] for d in draws) / len(draws) for f in draws[0]}
                budget = privacy_budget(params, settings.stats_window_s, area is not None)
                extra = "" if area else f", threshold {max(args.k, publication_threshold(params))}"
                print(line(f"{label} eps={eps:g}", mean, f"sens {params.sensitivity}{extra}; {budget.statement()}"))

if __name__ == "__main__":
    main()
