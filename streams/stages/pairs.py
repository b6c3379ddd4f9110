"""Pairs: each pair's current crossing, one record per participant; tombstones on withdrawal.

Consumes crossing-pairs (candidate crossings by pair key, purge requests). Asks the core:
geo.crossings.PairCooldown (a pair's current record: its latest cooldown period's earliest
crossing, whatever the arrival order; who met whom for withdrawals) and
anonymizers.consent.WithdrawalGuards (drop candidates computed before a withdrawal). Emits to the
compacted `crossings` topic one record per participant under crossing_key(participant, other)
each time a pair's current record changes, and tombstones under both keys of every pair of a
user who withdraws or is erased. Keeps both rules' state in changelogged tables (pair-last, pair-guard).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import orjson

from anonymizers.consent import WithdrawalGuards
from anonymizers.retention import DAY_S, erasure_tag
from geo.crossings import PairCooldown, pair_key, split_pair_key
from schemas.outputs import crossing_bytes, crossing_key
from schemas.timefmt import format_ts
from streams.app import app, crossing_pairs, crossings, guard_table, pair_table, settings
from streams.plumbing.bulk import batch_agent
from streams.plumbing.deadletters import each_record
from streams.plumbing.outbox import Undeliverable, partition_counts, send_many
from streams.plumbing.partitioner import partitions_for
from streams.plumbing.partitions import PartitionStates
from streams.plumbing.rebalance import ownership
from streams.plumbing.tables import changelog_entry
from streams.rules import rules
from streams.stages.erasure import report_purge
from streams.stages.users import users
from streams.topics import crossings_lifetime_s

log = logging.getLogger(__name__)

# Who met whom is kept while `crossings` can still hold their records (tombstones included).
PAIR_MEMORY_S = crossings_lifetime_s(settings)
# A candidate predating a withdrawal is computed from pings in crossing-cells, kept for the raw
# lifetime at most (a detector may re-read them after a restart): its guard is needed that long.
GUARD_MEMORY_S = settings.raw_lifetime_hours * 3600.0 + DAY_S


@dataclass
class PairPartition:
    """Everything one crossing-pairs partition holds on this worker, rebuilt from its tables."""

    cooldown: PairCooldown
    guards: WithdrawalGuards

    @classmethod
    def restore(cls, p: int) -> "PairPartition":
        prefix = f"{p}|"
        # Pair-table values are [ts, reported at, place, band, distance, groups] of the pair's current
        # record and the groups it is the best of (PairCooldown.group_entries; older values lack the
        # last fields: unknown, they lose no tie they should win).
        pairs = []
        for k, v in pair_table.items():
            if k.startswith(prefix):
                ts, reported_at, place, band, d, groups = (list(v) + [None] * 6)[:6]
                pairs.append([*split_pair_key(k[len(prefix):]), ts, d, place, band, reported_at, groups])
        guards = {k[len(prefix):]: v for k, v in guard_table.items() if k.startswith(prefix)}
        return cls(PairCooldown.restore({"last": pairs}, rules().crossing), WithdrawalGuards.restore(guards))


pair_partitions: PartitionStates[PairPartition] = ownership.register(
    PartitionStates(crossing_pairs.get_topic_name(), PairPartition.restore))


@batch_agent(app, crossing_pairs)
async def report(tp, records) -> None:
    """Publish each change of a pair's current crossing, one record per participant; tombstones on withdrawal."""
    out = _Reports()
    state = pair_partitions.get(tp.partition)
    await each_record(tp, records, lambda tp_, record: _report_one(tp_.partition, state, record, out))
    await out.flush()


async def _report_one(p: int, state: PairPartition, record, out: "_Reports") -> None:
    body = orjson.loads(record.value)
    clock = time.time()
    if "purge" in body:
        await out.flush()  # crossings reported before the purge reach the topic before its tombstones
        await _purge(p, state, body, clock)
        return
    cooldown, guards, now = state.cooldown, state.guards, format_ts(clock)
    n = len(body["a"])
    # Each row is a candidate (g: [key, slice lo, slice hi], its group) or the withdrawal of a unit
    # that became a crowd (x: [key, slice]), from detector partition q at watermark wm.
    groups, withdrawn, sources, marks = (body.get(c) or [None] * n for c in ("g", "x", "q", "wm"))
    settled: dict[int, float] = {}
    for a, b, ts, d, place, band, cva, cvb, g, x, q, wm in zip(
            body["a"], body["b"], body["ts"], body.get("d") or [None] * n, body["place"], body["band"], body["cva"],
            body["cvb"], groups, withdrawn, sources, marks):
        if not a < b:
            raise ValueError(f"crossing-pairs record with users {a!r}, {b!r} not in order")
        if wm is not None and q is not None:
            settled[q] = max(wm, settled.get(q, wm))
        before = cooldown.current(a, b)
        if x is not None:
            outcome = cooldown.withdraw_unit(a, b, x[0], int(x[1]), clock)
        else:
            if guards and guards.blocks(users.tag(a), cva, users.tag(b), cvb):
                users.forget_tag(a), users.forget_tag(b)  # the user may be erased: keep no cached id
                continue  # computed from pings sent before a withdrawal that has already been applied
            if g is None:  # a record of a version that sent no groups: the pair's record alone
                if cooldown.offer_pair(a, b, ts, d, place, band, clock):
                    _publish(p, cooldown, out, a, b, (ts, d, place, band), now)
                continue
            outcome = cooldown.offer_group(a, b, g[0], int(g[1]), int(g[2]), ts, d, place, band, q, clock)
        if outcome.changed and _shown(outcome.record) != _shown(before):
            _publish(p, cooldown, out, a, b, outcome.record, now)
        elif (outcome.changed or outcome.touched) and outcome.record is not None:  # saved, not shown again
            out.pair_reported(p, f"{p}|{pair_key(a, b)}", _table_value(cooldown, a, b, outcome.record))
    for q, wm in settled.items():
        cooldown.settle(q, wm)


def _shown(record) -> tuple | None:
    """What a participant's record shows of a pair's record (ts, place, band): the exact distance, which
    orders ties, is not published, so a record differing only in it is not published again."""
    return None if record is None else (record[0], record[2], record[3])


def _table_value(cooldown: PairCooldown, a: str, b: str, record) -> list:
    ts, d, place, band = record
    return [ts, cooldown.reported_at(a, b), place, band, d, cooldown.group_entries(a, b)]


def _publish(p: int, cooldown: PairCooldown, out: "_Reports", a: str, b: str, record, now: str) -> None:
    """The pair's record changed: one record per participant, or tombstones when it has none any more."""
    key = f"{p}|{pair_key(a, b)}"
    if record is None:
        out.pair_reported(p, key, None)
        out.crossing(a, b, None)
        out.crossing(b, a, None)
        return
    out.pair_reported(p, key, _table_value(cooldown, a, b, record))
    ts, _, place, band = record
    at = format_ts(ts)
    for user, other in ((a, b), (b, a)):  # one record per participant, placed by that participant
        out.crossing(user, other, crossing_bytes(user, other, at, place, rules().crossing.place_resolution, band, now))


async def _purge(p: int, state: PairPartition, body: dict, clock: float) -> None:
    """Guard against older candidates of the user, forget their pairs, tombstone both sides of each."""
    user = body["purge"]
    tag = erasure_tag(rules().secret, user)  # keyed hash: no user id is kept in this guard
    guard_table[f"{p}|{tag}"] = list(state.guards.withdraw(tag, body["v"], clock))  # at this record's partition
    partners = state.cooldown.purge_user(user)
    await report_purge(p, user, "crossing_pairs", len(partners), body)
    out = _Reports()
    for other in partners:
        pair_table.pop(f"{p}|{pair_key(user, other)}", None)
        out.crossing(other, user, None)  # the partner stops showing the user
        out.crossing(user, other, None)  # and the user's own view of the partner goes too
    await out.flush()


class _Reports:
    """Crossing records and pair-table entries of one batch, sent together by `flush`.

    Crossing records (or tombstones) are keyed crossing_key(participant, other) and placed like
    Kafka's default partitioner places the participant's id, computed for the whole batch at once
    (streams.plumbing.partitioner), so that each participant's records share a partition whatever
    the other party. Pair-table entries go to the table's store and changelog directly, in the
    table's own serialization (json), so that Faust restores them as if written through the table.
    """

    def __init__(self) -> None:
        self.users: list[bytes] = []
        self.keys: list[bytes] = []
        self.values: list[bytes | None] = []
        self.entries: list[tuple[int, str, list]] = []  # (partition, pair-table key, value)

    def crossing(self, user: str, other: str, value: bytes | None) -> None:
        self.users.append(user.encode())
        self.keys.append(crossing_key(user, other))
        self.values.append(value)

    def pair_reported(self, p: int, key: str, value: list | None) -> None:
        """The pair-table entry of a pair (None: the pair has no record any more)."""
        if value is None:
            pair_table.data.pop(key, None)
        else:
            pair_table.data[key] = value
        self.entries.append((p, key, value))

    async def flush(self) -> None:
        if self.keys:
            parts = partitions_for(self.users, await partition_counts.of(crossings))
            await send_many(crossings, list(zip(self.keys, self.values, parts)))
        if self.entries:
            await send_many(pair_table.changelog_topic,
                            [(*changelog_entry(key, value), p) for p, key, value in self.entries])
        self.users, self.keys, self.values, self.entries = [], [], [], []


# --------------------------------------------------------------------------- forgetting


@app.timer(300.0)
async def forget_old_pairs() -> None:
    """Forget who met whom once the crossings topic no longer holds their records, and old guards."""
    now = time.time()
    try:
        for messages in forget_pairs_reported_before(now - PAIR_MEMORY_S).values():
            await send_many(pair_table.changelog_topic, messages)
        for messages in forget_guards_set_before(now - GUARD_MEMORY_S).values():
            await send_many(guard_table.changelog_topic, messages)
    except Undeliverable:  # the broker away for longer than the retries: a timer must not stop the worker
        log.exception("tombstones of forgotten pairs not sent; a restart would restore them until the next pass")


def forget_pairs_reported_before(before: float) -> dict[int, list[tuple[bytes, None, int]]]:
    """Drop pairs last reported before `before` from the partitions this worker owns; their tombstones.

    Only the owner forgets: a copy left from an earlier ownership may be older than what the
    owner has written since.
    """
    tombstones: dict[int, list[tuple[bytes, None, int]]] = {}
    for p in sorted(pair_partitions.owned):
        for a, b in pair_partitions.get(p).cooldown.forget_reported_before(before):
            key = f"{p}|{pair_key(a, b)}"
            pair_table.data.pop(key, None)
            tombstones.setdefault(p, []).append((*changelog_entry(key, None), p))
    return tombstones


def forget_guards_set_before(before: float) -> dict[int, list[tuple[bytes, None, int]]]:
    """Drop withdrawal guards set before `before` (wall clock) on owned partitions; their tombstones."""
    tombstones: dict[int, list[tuple[bytes, None, int]]] = {}
    for p in sorted(pair_partitions.owned):
        for tag in pair_partitions.get(p).guards.forget_set_before(before):
            key = f"{p}|{tag}"
            guard_table.data.pop(key, None)
            tombstones.setdefault(p, []).append((*changelog_entry(key, None), p))
    return tombstones
