"""Space-time crossings between users: batch detection, streaming detection, cooldown.

| module | what |
|---|---|
| `model` | `CrossingParams` (the defaults), `Fix`, `Crossing`, keys, bands, and the shared rules: the exact test, zones, `is_usable` (accuracy), `cooldown_period` and `supersedes` (one report per pair and period) |
| `search` | `detect_crossings`, `detect_pairs`, `latest_per_pair`: a frame of pings at once (grid search); `detect_crossings_chunked`: the same rows one time chunk at a time |
| `crowd` | the crowd rule: `CrowdCounts`, `GroupBests` |
| `routing` | `route`, `route_many`: the partition keys of a fix in the stream |
| `detector` | `CellDetector`: streaming detection at one partition key |
| `cooldown` | `PairCooldown`: each pair's current record (its latest period's earliest crossing), in any arrival order |

Both forms apply model's rules, so they agree with geo.oracle.brute_force_pairs bit for bit.
"""

from geo.crossings.cooldown import PairCooldown
from geo.crossings.detector import CellDetector
from geo.crossings.model import (Crossing, CrossingParams, Fix, LateFix, ParticipantView, cooldown_period,
                                 distance_band, distance_bands, is_usable, pair_key, place_of, split_pair_key,
                                 supersedes)
from geo.crossings.routing import Routes, route, route_many


def __getattr__(name: str):
    # The batch search needs pandas (~0.3 s to import): loaded on first use, so the worker's and
    # the CLI's settings, which read CrossingParams' defaults, do not pay for it.
    if name in ("detect_crossings", "detect_crossings_chunked", "detect_pairs", "latest_per_pair"):
        from geo.crossings import search

        return getattr(search, name)
    raise AttributeError(f"module 'geo.crossings' has no attribute {name!r}")

__all__ = [
    "CrossingParams",
    "Fix",
    "Crossing",
    "ParticipantView",
    "LateFix",
    "distance_band",
    "distance_bands",
    "place_of",
    "is_usable",
    "cooldown_period",
    "supersedes",
    "detect_crossings",
    "detect_crossings_chunked",
    "detect_pairs",
    "latest_per_pair",
    "route",
    "route_many",
    "Routes",
    "CellDetector",
    "PairCooldown",
    "pair_key",
    "split_pair_key",
]
