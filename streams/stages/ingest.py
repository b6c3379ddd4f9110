"""Ingest: validate the inputs, apply consent before any state, send each event where it may go.

Consumes geo-pings, connection-logs and consents (keyed by user). Asks the core:
schemas.events (decode and validate), anonymizers.consent.decide_consent (last writer wins),
anonymizers.destinations (which stages an event may feed: none for an opted-out or erased user),
geo.crossings.route_many (the spatial keys of the crossing stage), anonymizers.connection
(technical data reduced, no user id). Emits crossing-cells, stats-cells and stats-connections
batches (streams.plumbing.outbox), dead letters for rejected input, counts per input partition
(received = accepted + rejected + dropped_consent); consent changes and deletions go on to
streams.stages.erasure.
"""
from __future__ import annotations

import time

import numpy as np

from anonymizers.connection import group_key, reduce_connection
from anonymizers.consent import Consent, ConsentOutcome, decide_consent
from anonymizers.destinations import feeds_connection_statistics, ping_destinations
from anonymizers.retention import Activity, on_login, plan_erasure, plan_withdrawal
from anonymizers.windows import window_start
from geo.crossings import route_many
from schemas.events import Reason, Rejection, decode, decode_ping_fast
from schemas.outputs import b64
from schemas.timefmt import format_ts
from streams.app import (P, activity_table, app, connection_logs, consent_table, consents, crossing_cells, geo_pings, stats_cells,
                         stats_connections)
from streams.plumbing.bulk import batch_agent, processing
from streams.plumbing.counters import ingest_counters
from streams.plumbing.deadletters import dead_letter_record, processing_error
from streams.plumbing.outbox import Outbox, cell_partition
from streams.plumbing.partitioner import partitions_for
from streams.rules import rules
from streams.stages import erasure
from streams.stages.contribution import contribution
from streams.stages.users import users

CONNECTIONS_KEY = "connections"  # one key: one window holds every group, so the "other" row is exact


# --------------------------------------------------------------------------- consents


@batch_agent(app, consents, first=True)
async def ingest_consents(tp, records) -> None:
    """Validate consent records and keep each user's current consent in the table; erase on deletion.

    Handled before the pings and logs fetched at the same time, so that a consent sent before a
    ping is applied before that ping is judged, even when the worker works through a backlog.
    """
    await _ingest_each(tp, records, _ingest_consent)


async def _ingest_consent(record) -> str | Rejection:
    """Apply one consent record: its outcome ("accepted", "dropped_consent") or why it is rejected."""
    if record.value is None:
        return "accepted"  # a tombstone (written after an erasure): compaction only
    decoded = decode("consent", record.value, rules().limits, key=record.key)
    if isinstance(decoded, Rejection):
        return decoded
    consent = Consent(
        user_id=decoded.user_id, updated_at=decoded.updated_at, geolocation=decoded.geolocation,
        crossings=decoded.crossings, partner_sharing=decoded.partner_sharing, deleted=decoded.deleted,
    )
    raw = consent_table.get(consent.user_id)
    previous = None if raw is None else Consent.from_dict(raw)
    change = decide_consent(previous, consent, erased=users.is_erased(consent.user_id))
    if change.outcome is ConsentOutcome.ERASED:
        # Keep the compacted topic clean: a record sent after the erasure gets its own tombstone.
        await consents.send(key=consent.user_id.encode(), value=None)
        return "dropped_consent"
    if change.outcome is ConsentOutcome.STALE:
        return Rejection(
            Reason.LATE_EVENT,
            f"updated_at={format_ts(consent.updated_at)} is older than the recorded consent "
            f"({format_ts(previous.updated_at)}); send the user's current state",
        )
    if change.outcome is ConsentOutcome.ERASE:
        await erasure.erase(consent.user_id, plan_erasure("account_deleted"), consent.updated_at)
    else:
        consent_table[consent.user_id] = consent.to_dict()
        plan = plan_withdrawal(change.withdrawn)
        if plan is not None:
            await erasure.purge_downstream(consent.user_id, consent.updated_at, plan)
    return "accepted"


# --------------------------------------------------------------------------- pings


@batch_agent(app, geo_pings)
async def ingest_pings(tp, records) -> None:
    """Validate pings and drop those without geolocation consent, before any other state.

    The accepted pings of the batch are routed to their spatial keys together (`route_many`) and
    leave as one message per destination partition (Outbox).
    """
    out = Outbox(tp.topic, tp.partition, progress_to=(crossing_cells, stats_cells))
    routed = _ToRoute()
    now = time.time()
    outcomes: list[bool | Rejection] = []
    # With DP: which pings are on their key's own partition, the only ones the contribution bound sees whole.
    homes = (partitions_for([record.key or b"" for record in records], P) if rules().dp is not None
             else [tp.partition] * len(records))
    for i, record in enumerate(records):
        try:
            outcome = _ingest_ping(i, record, now, out, routed, homes[i] == tp.partition)
        except Exception as exc:  # a bug must not stop the worker: keep the message for replay
            outcome = processing_error(exc)
        outcomes.append(outcome)
    for i, exc in _route_pings(routed, out):  # a ping whose routing failed is kept for replay, not lost
        outcomes[i] = processing_error(exc)
    await out.flush()
    if rules().dp is not None:
        contribution.expire(rules(), tp.partition, out.progress)
    for record, outcome in zip(records, outcomes):  # counted in offset order, each offset once
        if isinstance(outcome, Rejection):
            await _reject(tp, record, outcome)
        else:
            ingest_counters.count(tp.topic, tp.partition, record.offset, "accepted" if outcome else "dropped_consent")


def _ingest_ping(i: int, record, now: float, out: Outbox, routed: "_ToRoute", home: bool) -> bool | Rejection:
    """Decode, validate and gate ping i of a batch: True (forwarded), False (no consent) or why it is rejected.

    `home`: the record is on its key's partition (where the DP contribution bound sees all of a user's pings).
    """
    r = rules()
    fields = decode_ping_fast(record.value, r.limits, now, key=record.key)
    if fields is None:  # not plainly valid: the full decoder gives the record or the exact reason
        ping = decode("ping", record.value, r.limits, now=now, key=record.key)
        if isinstance(ping, Rejection):
            return ping
        fields = (ping.user_id, ping.ts, ping.lat, ping.lon, ping.accuracy_m)
    user, ts, lat, lon, _ = fields
    if ts > out.progress:
        out.progress = ts
    schedule = users.schedule(user)
    where = ping_destinations(schedule, ts, lat, lon, r.zones, r.kanon)
    if not where.accepted:
        return False
    if where.crossings:
        routed.add(i, record, fields, schedule.version)  # routed with the whole batch: _route_pings
    if where.partner_cell is not None:
        ws = window_start(ts, r.stats_window_s)
        member = users.pseudonym(user, ws)
        # With DP, only the user's first m cells of the window count (streams.stages.contribution).
        if r.dp is None or contribution.admit(r, record.partition, record.key is not None and home, ws, member,
                                              where.partner_cell):
            out.add(stats_cells, where.partner_region, record.offset, ts=ts, cell=where.partner_cell, m=member)
    return True


class _ToRoute:
    """Accepted pings of one input batch waiting to be routed to the crossing stage, column by column."""

    def __init__(self) -> None:
        self.index: list[int] = []  # position of the ping in its input batch
        self.record: list = []
        self.user: list[str] = []
        self.ts: list[float] = []
        self.lat: list[float] = []
        self.lon: list[float] = []
        self.acc: list[float | None] = []
        self.cv: list[float] = []

    def add(self, index: int, record, fields: tuple, cv: float) -> None:
        user, ts, lat, lon, acc = fields
        self.index.append(index)
        self.record.append(record)
        self.user.append(user)
        self.ts.append(ts)
        self.lat.append(lat)
        self.lon.append(lon)
        self.acc.append(acc)
        self.cv.append(cv)


def _route_pings(routed: _ToRoute, out: Outbox) -> list[tuple[int, Exception]]:
    """Route the batch's pings to their spatial keys together and queue them for crossing-cells.

    Returns (batch position, error) of pings that could not be routed: if the batch fails as a
    whole, each ping is tried on its own, so only a failing one is set aside.
    """
    if not routed.index:
        return []
    try:
        _queue_routes(routed, list(range(len(routed.index))), out)
        return []
    except Exception:
        failed = []
        for j in range(len(routed.index)):
            try:
                _queue_routes(routed, [j], out)
            except Exception as exc:
                failed.append((routed.index[j], exc))
        return failed


def _queue_routes(routed: _ToRoute, sel: list[int], out: Outbox) -> None:
    """Queue pings `sel` of `routed` once per key route_many gives (one column batch per destination)."""
    r = route_many([routed.lat[j] for j in sel], [routed.lon[j] for j in sel], [routed.acc[j] for j in sel],
                   rules().crossing)
    if not r.keys:
        return
    ping = np.asarray(sel, dtype=np.int64)[r.fix]  # entry -> position in routed
    keys = np.asarray(r.keys, dtype=object)
    homes = keys[r.home][np.cumsum(r.home) - 1]  # each ping's first entry is its home key
    raw = np.full(len(r.keys), None, dtype=object)  # kept once, with the home key, for a late ping's dead letter
    raw[r.home] = [b64(routed.record[j].value) for j in ping[r.home].tolist()]
    offsets = np.asarray([record.offset for record in routed.record], dtype=np.int64)
    cols = {name: np.asarray(getattr(routed, name), dtype=object) for name in ("user", "ts", "lat", "lon", "acc", "cv")}
    dest = np.fromiter(map(cell_partition, r.keys), dtype=np.int64, count=len(r.keys))
    queued = []
    for partition in np.unique(dest).tolist():
        e = np.flatnonzero(dest == partition)
        p = ping[e]
        queued.append((partition, {
            "k": keys[e].tolist(), "o": offsets[p].tolist(), "u": cols["user"][p].tolist(),
            "ts": cols["ts"][p].tolist(), "lat": cols["lat"][p].tolist(), "lon": cols["lon"][p].tolist(),
            "acc": cols["acc"][p].tolist(), "h": homes[e].tolist(), "cv": cols["cv"][p].tolist(),
            "raw": raw[e].tolist()}))
    for partition, columns in queued:  # nothing is queued unless every destination was built
        out.add_columns(crossing_cells, partition, columns)


# --------------------------------------------------------------------------- connection logs


@batch_agent(app, connection_logs)
async def ingest_connection_logs(tp, records) -> None:
    """Validate connection logs; logs of deleted accounts are dropped; logins keep users active."""
    out = Outbox(tp.topic, tp.partition, progress_to=(stats_connections,))
    await _ingest_each(tp, records, lambda record: _ingest_connection_log(tp, record, out))
    await out.flush()


async def _ingest_connection_log(tp, record, out: Outbox) -> str | Rejection:
    """Decode, forward and record the activity of one connection log: its outcome or why it is rejected."""
    r = rules()
    log = decode("connection-log", record.value, r.limits, key=record.key)
    if isinstance(log, Rejection):
        return log
    if log.ts > out.progress:
        out.progress = log.ts
    if not feeds_connection_statistics(erased=users.is_erased(log.user_id)):
        return "dropped_consent"
    reduced = reduce_connection(ts=log.ts, ip=log.ip, user_agent=log.user_agent, event=log.event,
                                isp=log.isp, language=log.language)  # no user id leaves the reduction
    out.add(stats_connections, CONNECTIONS_KEY, record.offset, ts=log.ts, g=list(group_key(reduced, r.group_by)),
            m=users.pseudonym(log.user_id, window_start(log.ts, r.stats_window_s)))
    if log.event == "login":
        previous = activity_table.get(log.user_id)
        current = on_login(Activity.from_dict(previous) if previous else None, log.ts).to_dict()
        if current != previous:
            activity_table[log.user_id] = current
    now = erasure.inactivity.observe(tp.partition, log.ts)
    if now is not None:
        await out.flush()  # what came before an erasure reaches the stages before its purge
        await erasure.check_inactivity(now)
    return "accepted"


# --------------------------------------------------------------------------- outcomes


async def _ingest_each(tp, records, ingest) -> None:
    """Run `ingest(record)` on each input record as the current event; count its outcome or dead-letter it."""
    for record in records:
        with processing(tp, record):  # table writes go to this record's partition
            try:
                outcome = await ingest(record)
            except Exception as exc:  # a bug must not stop the worker: keep the message for replay
                outcome = processing_error(exc)
        if isinstance(outcome, Rejection):
            await _reject(tp, record, outcome)
        else:
            ingest_counters.count(tp.topic, tp.partition, record.offset, outcome)


async def _reject(tp, record, rejection: Rejection) -> None:
    """Dead-letter one input record, raw bytes intact, and count it."""
    if rejection.reason is Reason.LATE_EVENT and ingest_counters.seen(tp.topic, tp.partition, record.offset):
        # Delivered again after a fault: what it is late against (a newer consent) came after it, and
        # it was judged before that. Other rejections do not depend on state, and are sent again.
        return
    await dead_letter_record(tp, record, rejection)
    ingest_counters.count(tp.topic, tp.partition, record.offset, "rejected")
