"""Crossing detection: the pings of each spatial cell matched against each other, per partition.

Consumes crossing-cells (routed pings by spatial key, purge requests, progress markers). Asks the
core: geo.crossings.CellDetector (the exact crossing test, the crowd rule, lateness, eviction),
a local GroupBests (the pair stage's rule applied early per pair group, so repeats never leave the
partition), and geo.resume (where the detector's in-memory state can be rebuilt from after a
restart or a move). Emits to crossing-pairs (by pair) candidate crossings and the withdrawals of
those sent from a unit that became a crowd, dead letters for late pings, and what a purge removed
to the erasure reports.
"""
from __future__ import annotations

import base64
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from geo.crossings import CellDetector, LateFix, pair_key
from geo.crossings.crowd import GroupBests
from geo.resume import ReplayLog, ResumePoint, choose, progress_of, remember, restore_progress
from schemas.timefmt import format_ts
from streams.app import app, crossing_cells, crossing_pairs, resume_table, settings
from streams.clients import client_auth
from streams.plumbing.bulk import batch_agent
from streams.plumbing.deadletters import late, quarantine
from streams.plumbing.outbox import Outbox, progress_marker
from streams.plumbing.partitions import PartitionStates
from streams.plumbing.rebalance import ownership
from streams.plumbing.tables import peek, write_at
from streams.rules import rules
from streams.stages.erasure import report_purge

log = logging.getLogger(__name__)

# The detector holds at most window + lateness of pings, in memory only (no second copy of raw
# locations). A worker that starts, or takes a partition over, rebuilds it by replaying
# crossing-cells from the partition's last resume point, kept in the detector-resume table.
RESUME_EVERY_S = 1.0  # a new point per detector partition at most this often...
RESUME_KEEP = 60  # ...and this many kept: a crash resumes from the last commit, at most ~1 min back
EVICT_EVERY = 5000  # routed pings between two evictions of a partition's old pings
_CELL_COLUMNS = ("k", "o", "u", "ts", "lat", "lon", "acc", "h", "cv", "raw")


@dataclass
class DetectorPartition:
    """Everything one crossing-cells partition holds on this worker."""

    detector: CellDetector
    # The same cooldown rule the pair stage applies, applied per pair group before repartitioning,
    # keeps the pair topic small; the pair stage still decides (a pair seen in several cells).
    local_cooldown: GroupBests
    consent_versions: dict[str, float] = field(default_factory=dict)  # user -> consent version of their pings
    # Per input partition [topic, partition], the highest input offset whose pings reached this partition: a
    # ping at or below it was sent again by ingest after a fault (its input offset was not committed yet).
    inputs_seen: dict[tuple[str, int], int] = field(default_factory=dict)
    replay_log: ReplayLog = field(default_factory=ReplayLog)
    since_evict: int = 0
    resume_saved_at: float = -math.inf  # monotonic clock
    rebuilt: dict | None = None  # how it was rebuilt (for /state/)
    ready: bool = False  # rebuilt from the partition's resume point

    @classmethod
    def empty(cls, p: int) -> "DetectorPartition":
        r = rules()
        # Every geo-pings partition feeds every cell partition: the watermark waits for the slowest.
        return cls(CellDetector(r.crossing, r.zones, sources=range(settings.partitions)), GroupBests(r.crossing))


detectors: PartitionStates[DetectorPartition] = ownership.register(
    PartitionStates(crossing_cells.get_topic_name(), DetectorPartition.empty))


@batch_agent(app, crossing_cells)
async def detect(tp, records) -> None:
    """Detect crossings among the pings of each spatial cell; late pings are dead-lettered.

    The first records of a partition after a start or a rebalance find its detector rebuilt from
    the partition's last resume point. Then, consecutive batches of one fetch are matched in one
    `add_many` call; a purge request is applied in its place in the order. A message that cannot
    be read is quarantined and the stage goes on.
    """
    state = detectors.get(tp.partition)
    if not state.ready:
        await _rebuild(tp, state, records[0].offset)
    await _detect_records(tp, state, records, emit=True)
    _save_resume_point(tp.partition, state)


async def _detect_records(tp, state: DetectorPartition, records, emit: bool) -> int:
    """Run records of crossing-cells partition tp through its detector, in order; the pings among them.

    emit=False replays records handled before (by this or an earlier owner): state only, with no
    candidate, dead letter or erasure report sent again.
    """
    before = progress_of(state.detector)
    newest, pings = -math.inf, 0
    pending: list[tuple[object, dict]] = []
    for record in records:
        try:
            body = orjson.loads(record.value)
            if "purge" in body:
                await _detect_batches(tp, state, pending, emit)
                pending = []
                await _purge(tp.partition, state, body, emit)
            elif "progress" in body:
                source, progress = progress_marker(body)
                await _detect_batches(tp, state, pending, emit)  # the marker counts after the batches sent before it
                pending = []
                state.detector.advance(source, progress)
            else:
                body = _checked_batch(body)
                newest = max(newest, _newest_ping(body["ts"]))
                pending.append((record, body))
                pings += len(body["k"])
        except Exception as exc:  # one bad record never stops the stage: it is kept as a dead letter
            if emit:
                await quarantine(tp, record, exc)
    await _detect_batches(tp, state, pending, emit)
    # Progress markers move the watermark without a fix: held crossings whose slices are now over go.
    state.local_cooldown.close(state.detector.watermark)
    if state.local_cooldown.released:
        out = Outbox()
        _add_released(out, tp.partition, state, state.detector.watermark)
        if emit:
            await out.flush()
    state.replay_log.note(records[0].offset, records[-1].offset + 1, before, newest)
    return pings


def _newest_ping(ts: list) -> float:
    """The newest finite event time of a batch column (-inf if none): how long the batch may matter."""
    t = np.asarray(ts, dtype=np.float64)
    t = t[np.isfinite(t)]
    return float(t.max()) if t.size else -math.inf


def _checked_batch(body: dict) -> dict:
    """A crossing-cells batch whose columns are all there and of one length (else ValueError)."""
    n = len(body["k"])
    if any(not isinstance(body[c], list) or len(body[c]) != n for c in _CELL_COLUMNS) or len(body["src"]) != 2:
        raise ValueError("crossing-cells batch with missing or uneven columns")
    return body


async def _purge(p: int, state: DetectorPartition, body: dict, emit: bool) -> None:
    user = body["purge"]
    state.local_cooldown.purge_user(user)
    removed = state.detector.purge_user(user)
    state.consent_versions.pop(user, None)
    if emit:
        await report_purge(p, user, "detector_pings", removed, body)


def _add_released(out: Outbox, p: int, state: DetectorPartition, wm: float) -> None:
    """Queue the crossings held back where a crowd just was whose slices are over (GroupBests.hold)."""
    local, versions = state.local_cooldown, state.consent_versions
    for c in local.released:
        out.add(crossing_pairs, c.pair_key, None, a=c.user_a, b=c.user_b, ts=c.ts, d=c.distance_m, place=c.place,
                band=c.distance_band, cva=versions.get(c.user_a, 0.0), cvb=versions.get(c.user_b, 0.0),
                g=list(c.group), x=None, q=p, wm=wm)
    local.released.clear()


async def _detect_batches(tp, state: DetectorPartition, pending: list[tuple[object, dict]], emit: bool) -> None:
    """Match several batches at once; if that fails, each on its own, quarantining the one that fails."""
    if not pending:
        return
    bodies = [body for _, body in pending]
    for body in bodies:
        body["again"] = _sent_again(state.inputs_seen, body)
    merged = {c: [v for body in bodies for v in body[c]] for c in (*_CELL_COLUMNS, "again")}
    merged["src"] = [body["src"] for body in bodies for _ in body["k"]]
    try:
        await _detect_columns(tp.partition, state, merged, emit)
        return
    except Exception as exc:
        if len(pending) == 1:
            if emit:
                await quarantine(tp, pending[0][0], exc)
            return
    for record, body in pending:  # find the one that fails
        try:
            await _detect_columns(tp.partition, state, dict(body, src=[body["src"]] * len(body["k"])), emit)
        except Exception as exc:
            if emit:
                await quarantine(tp, record, exc)


def _sent_again(inputs_seen: dict[tuple[str, int], int], body: dict) -> list[bool]:
    """For each ping of a batch, whether its input message reached this partition before; notes the batch's.

    Ingest sends an input partition's pings to a partition in input offset order; after a fault it
    handles again what was not committed, from a lower offset. Such a ping was matched (or found
    late) the first time: if it is late now, that is no news, and it gets no dead letter again.
    """
    topic, partition = body["src"]
    if not (isinstance(topic, str) and isinstance(partition, int)):
        return [False] * len(body["o"])
    src = (topic, partition)
    before = inputs_seen.get(src, -1)
    offsets = [o for o in body["o"] if isinstance(o, int)]
    if offsets:
        inputs_seen[src] = max(before, max(offsets))
    return [isinstance(o, int) and o <= before for o in body["o"]]


async def _detect_columns(p: int, state: DetectorPartition, body: dict, emit: bool) -> None:
    """Run one (merged) batch of routed pings through partition p's detector and queue new pairs."""
    detector, versions, local = state.detector, state.consent_versions, state.local_cooldown
    users, keys, homes, srcs = body["u"], body["k"], body["h"], body["src"]
    again = body.get("again") or [False] * len(keys)
    versions.update(zip(users, body["cv"]))
    results = detector.add_many(users, body["ts"], body["lat"], body["lon"], body["acc"], homes, keys,
                                sources=[src[1] for src in srcs], cooldown=local)
    out = Outbox()
    wm = detector.watermark
    # Withdrawals first: a unit became a crowd before any of the batch's fixes was matched.
    for a, b, key, s in local.withdrawn:
        out.add(crossing_pairs, pair_key(a, b), None, a=a, b=b, ts=None, d=None, place=None, band=None, cva=None,
                cvb=None, g=None, x=[key, s], q=p, wm=wm)
    local.withdrawn.clear()
    _add_released(out, p, state, wm)
    for i, result in enumerate(results):
        if isinstance(result, LateFix):
            # One dead letter per ping, not per key it was sent to, nor again for a ping sent again.
            if emit and homes[i] == keys[i] and not again[i]:
                raw = body["raw"][i]
                await late(crossing_cells, p, [*srcs[i], body["o"][i]], users[i].encode(),
                           None if raw is None else base64.b64decode(raw),
                           f"ping ts={format_ts(result.fix.ts)} arrived after the crossing detector's "
                           f"watermark {format_ts(result.watermark)} (allowed lateness "
                           f"{detector.params.lateness_s:.0f} s); it was not used for crossings")
            continue
        for c in result:
            out.add(crossing_pairs, c.pair_key, None, a=c.user_a, b=c.user_b, ts=c.ts, d=c.distance_m, place=c.place,
                    band=c.distance_band, cva=versions.get(c.user_a, 0.0), cvb=versions.get(c.user_b, 0.0),
                    g=list(c.group), x=None, q=p, wm=wm)
    if emit:
        await out.flush()
    state.since_evict += len(users)
    if state.since_evict >= EVICT_EVERY:
        state.since_evict = 0
        detector.evict()
        local.close(detector.watermark)


# --------------------------------------------------------------------------- resume points


async def _rebuild(tp, state: DetectorPartition, resume_at: int) -> None:
    """Give partition tp's detector the state its last owner left at offset `resume_at`.

    Starts from the newest saved resume point at or before `resume_at` and replays crossing-cells
    from its `low` offset up to `resume_at`. Without one (a first start), the detector starts empty.
    """
    state.ready = True
    p = tp.partition
    points = _saved_points(p)
    point = choose(points, resume_at)
    if point is None:
        if points:
            log.warning("%s[%d]: no resume point at or before offset %d (oldest at %d): the detector starts empty, "
                        "so crossings between earlier pings and later ones may be missed",
                        tp.topic, p, resume_at, points[0].at)
        return
    t0 = time.perf_counter()
    restore_progress(state.detector, point.progress)
    records, pings = await _replay(tp, state, point.low, resume_at) if point.low < resume_at else (0, 0)
    state.rebuilt = {"from_offset": point.low, "to_offset": resume_at, "records": records, "pings": pings,
                     "seconds": round(time.perf_counter() - t0, 3), "live_pings": state.detector.live_pings}
    log.info("%s[%d]: detector rebuilt: %s", tp.topic, p, state.rebuilt)


async def _replay(tp, state: DetectorPartition, low: int, end: int) -> tuple[int, int]:
    """Feed records [low, end) of partition tp to its detector without emitting anything.

    Returns how many records and routed pings (one per key a ping went to) were replayed.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    part = TopicPartition(tp.topic, tp.partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                **client_auth(settings).aiokafka(),
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                client_id=f"{settings.app_id}-detector-replay")
    await consumer.start()
    replayed = pings = 0
    try:
        consumer.assign([part])
        consumer.seek(part, low)
        while await consumer.position(part) < end:
            fetched = (await consumer.getmany(part, timeout_ms=1000, max_records=20_000)).get(part, [])
            records = [r for r in fetched if r.offset < end]
            if records:
                if not replayed and records[0].offset > low:
                    log.warning("%s[%d]: offsets %d..%d are gone (retention); the detector is rebuilt without them",
                                tp.topic, tp.partition, low, records[0].offset)
                pings += await _detect_records(tp, state, records, emit=False)
                replayed += len(records)
    finally:
        await consumer.stop()
    return replayed, pings


def _saved_points(p: int) -> list[ResumePoint]:
    """Partition p's saved resume points, oldest first (from the table, so they survive the worker).

    A value this code did not write counts as none: the detector starts empty rather than the
    stage stopping, and the next point saved replaces it.
    """
    try:
        return [ResumePoint.from_json(doc) for doc in peek(resume_table, str(p)) or []]
    except Exception:
        log.exception("unreadable resume points of crossing-cells partition %d", p)
        return []


def _save_resume_point(p: int, state: DetectorPartition) -> None:
    """Save where partition p's detector state can be rebuilt from (at most every RESUME_EVERY_S)."""
    now = time.monotonic()
    if now - state.resume_saved_at < RESUME_EVERY_S:
        return
    state.resume_saved_at = now
    point = state.replay_log.point(state.detector.replay_horizon, progress_of(state.detector))
    if point is None:
        return
    write_at(resume_table, p, str(p), [pt.to_json() for pt in remember(_saved_points(p), point, RESUME_KEEP)])
