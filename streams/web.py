"""The worker's web pages: health, counters, stage timings, stage state, metrics, and what it holds about a user.

Read-only views of the stages' state objects; no user data except on /audit/, which answers for
the one user asked about (for `crosspaths audit user`).
"""
from __future__ import annotations

import math
import time

from schemas.timefmt import format_ts
from streams.app import app, counter_table, receipt_table, settings
from streams.metrics import CONTENT_TYPE, consumer_lag, render, worker_metrics
from streams.plumbing.bulk import stage_stats
from streams.plumbing.tallies import tallies
from streams.plumbing.tables import peek
from streams.stages.detection import detectors
from streams.stages.erasure import pseudonyms_of, receipt_keys
from streams.stages.pairs import pair_partitions
from streams.stages.statistics import connection_windows, location_windows
from streams.stages.users import users


@app.page("/health/")
async def health_view(web, request):
    """Liveness."""
    return web.json({"ok": True, "app": settings.app_id})


@app.page("/counters/")
async def counters_view(web, request):
    """This worker's ingest counters per topic-partition."""
    return web.json({k: v for k, v in counter_table.items()})


@app.page("/batches/")
async def batches_view(web, request):
    """Per batch topic: wall-clock seconds in its handler, records and calls since start (and time waiting for records)."""
    return web.json({topic: vars(stats) for topic, stats in stage_stats(app).items()})


@app.page("/metrics")
async def metrics_view(web, request):
    """Prometheus text format: ingest outcomes, dead letters by reason, records sent, windows, stage time, lag."""
    families = worker_metrics({k: v for k, v in counter_table.items()}, tallies(app), stage_stats(app),
                              await _consumer_lag(), settings.app_id, settings.topic("crossings"),
                              settings.topic("erasure-receipts"))
    return web.bytes(render(families), headers={"Content-Type": CONTENT_TYPE})


async def _consumer_lag() -> dict[tuple[str, int], int]:
    """End offset minus committed offset of each partition this worker consumes (none before assignment)."""
    partitions = list(app.consumer.assignment())
    if not partitions:
        return {}
    # _committed_offset: Faust's record of what it committed, per partition (no public accessor)
    return consumer_lag(await app.consumer.highwaters(*partitions), app.consumer._committed_offset)


@app.page("/state/")
async def state_view(web, request):
    """Per stage partition of this worker: watermark, the input partition holding it back, state held."""
    return web.json(state_summary())


@app.page("/audit/")
async def audit_view(web, request):
    """What this worker holds in memory about one user (?user=ID): for `crosspaths audit user`."""
    return web.json(held_about(request.query.get("user", "")))


def held_about(user: str) -> dict:
    """How many pieces of state each stage of this worker holds about `user` (only non-zero ones)."""
    members = pseudonyms_of(user, time.time()) if user else set()
    found = {
        "detector_pings": sum(s.detector.pings_of(user) for s in detectors.values()),
        "consent_versions": sum(user in s.consent_versions for s in detectors.values()),
        "crossing_pairs": sum(len(s.cooldown.partners_of(user)) for s in pair_partitions.values()),
        "pending_receipts": int(bool(user) and peek(receipt_table, receipt_keys(user)[0]) is not None),
        "ingest_caches": users.entries_of(user),
        "location_memberships": location_windows.memberships_of(members),
        "connection_memberships": connection_windows.memberships_of(members),
    }
    return {"user": user, "found": {k: v for k, v in found.items() if v}}


def _ts_or_none(t: float | None) -> str | None:
    return None if t is None or not math.isfinite(t) else format_ts(t)


def _progress_view(progress: dict) -> dict:
    """Watermark inputs of a stage partition: the slowest input partition, and how far each is."""
    slowest = min(progress, key=progress.get) if progress else None
    return {"slowest_input": slowest, "input_progress": {str(k): _ts_or_none(v) for k, v in sorted(progress.items())}}


def state_summary() -> dict:
    """What the crossing and statistics stages of this worker hold, by stage and partition (no user data).

    A watermark that stays behind points at the input partition holding it back (`slowest_input`):
    an input partition that receives nothing at all keeps windows open and detector state growing.
    """
    out: dict[str, dict] = {}
    for p, state in detectors.items():
        det = state.detector
        out.setdefault("crossing-cells", {})[str(p)] = {
            "watermark": _ts_or_none(det.watermark), "live_pings": det.live_pings,
            "memory_bytes": det.memory_bytes(), **_progress_view(det.source_progress()), "rebuilt": state.rebuilt}
    for p, state in pair_partitions.items():
        out.setdefault("crossing-pairs", {})[str(p)] = {
            "pairs": len(state.cooldown), "users_with_partners": state.cooldown.users(),
            "withdrawal_guards": len(state.guards)}
    for stage, windows in (("stats-cells", location_windows), ("stats-connections", connection_windows)):
        for p, wd in sorted(windows.partitions().items()):
            out.setdefault(stage, {})[str(p)] = {
                "watermark": _ts_or_none(wd.watermark), "open_windows": [format_ts(w) for w in wd.open_windows()],
                **_progress_view(wd.source_progress())}
    out["table_keys"] = {name: len(table.data) for name, table in sorted(app.tables.items())}
    return out
