"""Throughput of the statistics core: WindowedDistinct + generalize_cells over synthetic pings (not CI)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import h3
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anonymizers.kanon import KAnonParams, generalize_cells  # noqa: E402
from anonymizers.pseudonym import Pseudonymizer  # noqa: E402
from anonymizers.windows import WindowedDistinct  # noqa: E402

CLOSE_EVERY = 10_000  # pings between two closed() calls, like a stream shell's timer


def synthetic_pings(n: int, users: int, hours: float, seed: int):
    """Return ts, base cell and pseudonym lists for n pings around Paris (res 9)."""
    rng = np.random.default_rng(seed)
    pool = sorted(h3.grid_disk(h3.latlng_to_cell(48.85, 2.35, 9), 40))
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 0.8  # a few busy cells, a long tail
    home = rng.choice(len(pool), size=users, p=weights / weights.sum())
    who = rng.integers(0, users, size=n)
    roaming = rng.random(n) < 0.2
    cell_idx = np.where(roaming, rng.integers(0, len(pool), size=n), home[who])
    t0 = 1_700_000_000.0
    ts = np.sort(rng.uniform(t0, t0 + hours * 3600, size=n)) + rng.normal(0, 5, size=n)  # slight disorder
    pseudo = Pseudonymizer(b"bench-secret-not-for-production!", rotation_s=86400)
    names = [pseudo.pseudonym(f"user-{u}", t0) for u in range(users)]
    return ts.tolist(), [pool[i] for i in cell_idx], [names[u] for u in who]


def window_bytes(members: dict) -> tuple[int, int]:
    """Return (JSON bytes, approximate in-memory bytes) of one window's members."""
    as_json = len(json.dumps([[k, sorted(v)] for k, v in members.items()]).encode())
    seen: set[int] = set()
    mem = sys.getsizeof(members)
    for key, vals in members.items():
        mem += sys.getsizeof(key) + sys.getsizeof(vals)
        for v in vals:
            if id(v) not in seen:  # a member string is stored once per process, count it once
                seen.add(id(v))
                mem += sys.getsizeof(v)
    return as_json, mem


def run(args: argparse.Namespace) -> dict:
    """Feed the pings, close windows as the watermark moves, generalize each closed window."""
    ts, cells, members = synthetic_pings(args.pings, args.users, args.hours, args.seed)
    params = KAnonParams(k=args.k, base_resolution=9, coarsest_resolution=5)
    w = WindowedDistinct(args.window_s, args.lateness_s)
    t_add = t_gen = t_measure = 0.0
    late = published = 0
    sizes = []

    def publish(closed):
        nonlocal t_gen, t_measure, published
        for window in closed:
            t = time.perf_counter()
            sizes.append((len(window.members), sum(map(len, window.members.values())), *window_bytes(window.members)))
            t_measure += time.perf_counter() - t
            t = time.perf_counter()
            published += len(generalize_cells(window.members, params))
            t_gen += time.perf_counter() - t

    add, closed = w.add, w.closed
    total_start = time.perf_counter()
    for start in range(0, len(ts), CLOSE_EVERY):
        t = time.perf_counter()
        for i in range(start, min(start + CLOSE_EVERY, len(ts))):
            if add(ts[i], cells[i], members[i]) == "late":
                late += 1
        ready = closed()
        t_add += time.perf_counter() - t
        publish(ready)
    t = time.perf_counter()
    ready = w.flush()
    t_add += time.perf_counter() - t
    publish(ready)
    total = time.perf_counter() - total_start - t_measure  # size accounting is not aggregation

    n = len(ts)
    return {
        "pings": n,
        "users": args.users,
        "windows": len(sizes),
        "late": late,
        "published_rows": published,
        "total_s": total,
        "pings_per_s": n / total,
        "add_pings_per_s": n / t_add,
        "generalize_s_per_window": t_gen / max(1, len(sizes)),
        "cells_per_window": float(np.mean([s[0] for s in sizes])),
        "memberships_per_window": float(np.mean([s[1] for s in sizes])),
        "json_bytes_per_window": float(np.mean([s[2] for s in sizes])),
        "mem_bytes_per_window": float(np.mean([s[3] for s in sizes])),
        "max_mem_bytes_per_window": max(s[3] for s in sizes),
    }


def main() -> None:
    """Parse flags, run once, print a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pings", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--hours", type=float, default=6.0)
    p.add_argument("--window-s", type=float, default=3600.0)
    p.add_argument("--lateness-s", type=float, default=300.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    result = run(p.parse_args())
    result["python"] = platform.python_version()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
