"""Erasure and inactivity: forget a user everywhere, and say so in a receipt.

Consumes the ingest stage's requests (account deletion, consent withdrawal, inactivity found while
reading connection logs) and the stages' erasure-reports. Asks the core:
anonymizers.retention (the purge plan of an erasure or a withdrawal, inactivity actions and scan
schedule, receipt drafts, erasure tags). Emits purge requests to every partition of the stages the
plan names (the pair stage tombstones the user's crossings), tombstones for compacted topics,
inactivity notices, and one erasure receipt per erased user once every stage partition has answered.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from types import MappingProxyType

import faust
from faust.types import TP

from anonymizers.retention import (ERASURE_TOMBSTONED_TABLES, Action, Activity, InactivityScan, PurgePlan,
                                   PurgeTarget, ReceiptDraft, erasure_of, erasure_tag, inactivity_actions,
                                   plan_erasure, receipt_subject)
from anonymizers.windows import recent_windows
from geo.clock import EventClock
from schemas.timefmt import format_ts
from streams.app import (P, activity_table, app, changelog_topic_name, connection_logs, consent_table, consents, crossing_cells,
                         crossing_pairs, erased_table, erasure_receipts, erasure_reports, inactivity_notices,
                         receipt_table, settings, stats_cells, stats_connections)
from streams.plumbing.partitioner import partitions_for
from streams.plumbing.bulk import processing
from streams.plumbing.deadletters import each_guarded
from streams.rules import rules
from streams.topics import erasure_horizons
from streams.stages.contribution import contribution
from streams.stages.users import users

_PURGE_TOPICS: Mapping[PurgeTarget, faust.TopicT] = MappingProxyType({
    PurgeTarget.DETECTOR: crossing_cells, PurgeTarget.PAIRS: crossing_pairs,
    PurgeTarget.LOCATIONS: stats_cells, PurgeTarget.CONNECTIONS: stats_connections,
})


# --------------------------------------------------------------------------- erasure and purges


async def erase(user: str, plan: PurgePlan, at: float) -> None:
    """Erase every piece of state about a user, tombstone compacted topics, and start the receipt."""
    purged = {"consent_state": 0, "activity": 0}
    if consent_table.get(user) is not None:
        consent_table.pop(user)  # a tombstone in the table's changelog
        purged["consent_state"] = 1
    if activity_table.get(user) is not None:
        activity_table.pop(user)
        purged["activity"] = 1
    erased_table[erasure_tag(rules().secret, user)] = at
    purged["caches"] = users.forget(user)
    await consents.send(key=user.encode(), value=None)  # tombstone: compaction drops the user's records
    expect = await purge_downstream(user, at, plan)
    await erasure_reports.send(key=user.encode(), value=_json({
        "user": user, "stage": "ingest", "removed": purged, "expect": expect, "reason": plan.reason,
        "requested_at": at}))


async def purge_downstream(user: str, at: float, plan: PurgePlan) -> int:
    """Ask every partition of the plan's stages to forget `user`; returns how many purge requests went out."""
    crossing_body = _json({"purge": user, "v": at, "reason": plan.reason, "report": plan.report})
    stats_body = None
    if {PurgeTarget.LOCATIONS, PurgeTarget.CONNECTIONS} & plan.targets:
        members = sorted(pseudonyms_of(user, max(time.time(), at)))
        if PurgeTarget.LOCATIONS in plan.targets:  # the cells the user counted in, at their input partition
            contribution.forget(partitions_for([user.encode()], P)[0], set(members))
        stats_body = _json({"purge": members, "user": user if plan.report else None, "report": plan.report, "v": at})
    for p in range(P):
        for target in PurgeTarget:  # in this order: crossing stages, then statistics
            if target in plan.targets:
                body = crossing_body if target in (PurgeTarget.DETECTOR, PurgeTarget.PAIRS) else stats_body
                await _PURGE_TOPICS[target].send(key=b"purge", value=body, partition=p)
    return plan.requests(P)


async def report_purge(p: int, user: str | None, stage: str, removed: int, body: dict) -> None:
    """Tell the receipt builder what stage partition p removed for an erasure (when the purge asks for it)."""
    if body.get("report") and user:
        await erasure_reports.send(key=user.encode(), value=_json(
            {"user": user, "stage": stage, "partition": p, "removed": removed, "v": body.get("v")}))


def pseudonyms_of(user: str, now: float) -> set[str]:
    """The user's statistics pseudonyms in every window that may still be open at `now` (purges, audits)."""
    r = rules()
    return {r.pseudonyms.pseudonym(user, ws) for ws in recent_windows(now, r.stats_window_s)}


# --------------------------------------------------------------------------- inactivity


class Inactivity:
    """When this worker checks its users for inactivity, by event time (anonymizers.retention.InactivityScan).

    The clock is the slowest connection-logs partition this worker reads (geo.clock.EventClock,
    one source per owned partition): a partition that lags behind the others (a replay, a slow
    producer) holds it back, so no user is judged against a time their own partition has not
    reached. Every owned partition is scanned when the clock has moved on by the scan interval,
    whichever partition's log moved it.
    """

    def __init__(self, every_s: float = 3600.0) -> None:
        self.clock = EventClock()
        self.scan = InactivityScan(every_s)
        self.partitions: tuple[int, ...] = ()

    def reassign(self, partitions) -> None:
        """The worker now reads these connection-logs partitions (those it kept keep their progress)."""
        kept = self.clock.source_progress()
        self.partitions = tuple(sorted(partitions))
        self.clock = EventClock(sources=self.partitions)
        self.clock.restore((p, t) for p, t in kept.items() if p in self.partitions)

    def observe(self, partition: int, ts: float) -> float | None:
        """A valid log of this partition at ts; the clock if a scan of every owned partition is due now."""
        self.clock.observe(partition, ts)
        now = self.clock.progress
        return now if self.partitions and self.scan.due(now) else None


inactivity = Inactivity()


@app.on_partitions_assigned.connect
async def follow_assignment(app, assigned, **kwargs) -> None:
    """The inactivity clock follows the connection-logs partitions this worker reads."""
    name = connection_logs.get_topic_name()
    inactivity.reassign(tp.partition for tp in assigned if tp.topic == name)


async def check_inactivity(now: float) -> None:
    """Notify, then erase, the users of every owned partition who are inactive at event time `now`."""
    params = rules().inactivity
    known = list(activity_table.items())
    homes = partitions_for([user.encode() for user, _ in known], P)  # each user's input partition
    for partition in inactivity.partitions:
        mine = [(user, Activity.from_dict(raw)) for (user, raw), home in zip(known, homes) if home == partition]
        # Table writes go to the changelog partition of the current event: this user's partition.
        with processing(TP(connection_logs.get_topic_name(), partition), _NoRecord):
            for user, action in inactivity_actions(mine, now, params):
                if action is Action.NOTIFY:
                    last_login = Activity.from_dict(activity_table[user]).last_login
                    activity_table[user] = Activity(last_login, notified_at=now).to_dict()
                    await inactivity_notices.send(key=user.encode(), value=_json({
                        "user_id": user, "last_login": format_ts(last_login), "notified_at": format_ts(now),
                        "erase_after": format_ts(now + params.grace_s)}))
                elif action is Action.ERASE:
                    await erase(user, plan_erasure("inactivity"), now)


class _NoRecord:
    """Stands for the record being processed when a stage writes a table outside any input record."""

    offset = -1


# --------------------------------------------------------------------------- receipts


@app.agent(erasure_reports)
async def build_receipts(stream):
    """Collect what each stage removed for an erasure and publish one receipt when all have answered."""
    await each_guarded(stream, _receipt_one)


async def _receipt_one(event: faust.EventT) -> None:
    body = json.loads(event.message.value)
    user = body["user"]
    draft, done = receipt_keys(user)
    erasure = erasure_of(body)
    if erasure is not None and receipt_table.get(done) == erasure:
        return  # a report of an erasure whose receipt is out, delivered again: no new draft
    saved = receipt_table.get(draft)
    receipt = ReceiptDraft() if saved is None else ReceiptDraft.from_json(saved)
    receipt.add(body)
    if not receipt.complete:
        receipt_table[draft] = receipt.to_json()  # at this report's partition (co-partitioned by user)
    else:
        receipt_table.pop(draft, None)  # a tombstone in the changelog
        receipt_table[done] = receipt.requested_at
        completed = time.time()
        gone_by = {topic: completed + ms / 1000 for topic, ms in erasure_horizons(settings).items()}
        subject = receipt_subject(user)
        await erasure_receipts.send(key=subject.encode(), value=_json({
            "subject": subject, "reason": receipt.reason, "requested_at": format_ts(receipt.requested_at),
            "completed_at": format_ts(completed), "purged": receipt.purged,
            "tombstones": [settings.topic("consents"), settings.topic("crossings"),
                           *map(changelog_topic_name, ERASURE_TOMBSTONED_TABLES)],
            "crossings_tombstoned": receipt.purged.get("crossing_pairs", 0),
            # Every copy of what the pipeline held about the user is off the broker by then (the
            # topics' declared lifetimes, streams/topics.py), this receipt excepted.
            "all_copies_gone_by": format_ts(max(gone_by.values())),
            "copies_gone_by": {topic: format_ts(t) for topic, t in sorted(gone_by.items())}}))


def receipt_keys(user: str) -> tuple[str, str]:
    """The receipt-drafts table's keys for a user: its open draft, and the marker of its last receipt.

    Both by keyed hash (erasure_tag): the table's changelog never holds the user id, so nothing of
    the user waits there for compaction (a rarely written changelog may not roll a segment for long).
    """
    tag = erasure_tag(rules().secret, user)
    return f"draft|{tag}", f"done|{tag}"


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
