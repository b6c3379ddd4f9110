"""How many messages each input partition received, by outcome; and what stages counted (late...).

received = accepted + rejected + dropped_consent, per input topic-partition: the reconciliation
`crosspaths report` and the tests check. Counts live in the changelogged `counters` table.

Each input message (topic, partition, offset) is counted exactly once, whatever the faults
(`IngestCounters` says why, and the one window that remains).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import faust
from faust.types import TP

from streams.app import app, consents, connection_logs, counter_table, geo_pings
from streams.plumbing.bulk import before_commit
from streams.plumbing.tables import write_at

COUNTER_FIELDS = ("received", "accepted", "rejected", "dropped_consent")
NEXT = "next"  # in a partition's counts: the offset after the last message counted

log = logging.getLogger(__name__)


class IngestCounters:
    """Counts of the input partitions this worker reads: each offset once, written twice a second and before every commit.

    A partition's counts carry the next offset to count (`next`); a message below it was counted,
    by this worker or an earlier owner, and is not counted again when it is delivered again (the
    offset was not committed before a kill -9 or a rebalance). Counts and `next` are one table value,
    so whatever reaches the changelog is a consistent snapshot: the counts of offsets below `next`.

    Why no message is counted twice or never (the order the wiring below sets up):
    - twice: a message is counted only at or above `next`, and every value restored after a crash
      or a move carries its own `next`;
    - never: Faust commits an offset only after the handler of its message returned (it counted
      it) and acked it; before each commit the counts are written to the table and the commit
      waits until the broker has them (`before_commit`). So the committed offset is never above
      the `next` in the changelog: a restart resumes at or below it;
    - one writer per partition: on revocation the counts are written, and on the broker, before
      the revocation completes, so before the partition's next owner restores them; after it,
      nothing is counted until the next assignment (`revoke`), and then only for partitions this
      worker was assigned (a handler still running on a batch fetched before the rebalance counts
      it only if its partition stayed here). On a clean stop, the same as a revocation.
    Waiting for the broker's acknowledgement of the counts, not for Faust's producer flush, is what
    makes "written before" hold: that flush returns once its buffer is empty, while the last message
    taken from the buffer may still be on its way to the Kafka client.
    The window that remains: a worker the group expelled while it was alive (no heartbeat for the
    session timeout: a stalled process, not a kill -9 or a stop) counts until it learns so at its
    next heartbeat, and a write of that time may land after its successor restored the counts.
    """

    def __init__(self, table, consumer_generation: Callable[[], int | None] = lambda: None,
                 assigned: Callable[[str, int], bool] = lambda topic, partition: True,
                 topics: Iterable[str] = ()) -> None:
        self.table = table
        self.topics = frozenset(topics)  # input topics: what `count_rest` counts
        self._consumer_generation = consumer_generation  # the consumer group generation now
        self._assigned = assigned  # whether this worker is assigned a topic-partition now
        self._pending: dict[tuple[str, int], dict] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._revoked_in: int | None = None  # counting stops from a revocation to the next assignment
        self._unwaited: list = []  # changelog sends since the last `sends()`: the timer's too
        self.stale = 0  # counts refused: between revocation and assignment, or of a partition not assigned here

    def count(self, topic: str, partition: int, offset: int, outcome: str) -> bool:
        """Count the message at `offset` with this outcome; False if it was counted before (or may not be here)."""
        current = self._counts(topic, partition)
        if current is None or offset < current.get(NEXT, 0):
            return False
        current["received"] += 1
        current[outcome] = current.get(outcome, 0) + 1
        current[NEXT] = offset + 1
        self._dirty.add((topic, partition))
        return True

    def seen(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the message at `offset` was counted before: it is being delivered again after a fault."""
        current = self._counts(topic, partition)
        return current is not None and offset < current.get(NEXT, 0)

    def _counts(self, topic: str, partition: int) -> dict | None:
        """A partition's counts, restored from the table at first use after an assignment; None: not counted here."""
        slot = (topic, partition)
        current = self._pending.get(slot)
        if current is None:
            if not self._may_count(topic, partition):
                self.stale += 1
                return None
            restored = self.table.get(f"{topic}/{partition}")
            current = self._pending[slot] = {f: 0 for f in COUNTER_FIELDS} | dict(restored or {})
        return current

    def count_rest(self, topic: str, partition: int, offsets: Iterable[int], outcome: str) -> int:
        """Count those of `offsets` of an input topic not counted yet with `outcome` (a batch a stage gave up on)."""
        if topic not in self.topics:
            return 0
        return sum(self.count(topic, partition, offset, outcome) for offset in offsets)

    def _may_count(self, topic: str, partition: int) -> bool:
        """Whether a partition's counts may be loaded now: not between a revocation and the next assignment, and
        only where the partition is assigned (a handler that outlived a rebalance may run on one that moved)."""
        if self._revoked_in is not None and self._consumer_generation() == self._revoked_in:
            return False
        return self._assigned(topic, partition)

    def flush(self) -> None:
        """Write changed counts to the table at their input partition."""
        for topic, partition in list(self._dirty):
            key, value = f"{topic}/{partition}", dict(self._pending[(topic, partition)])
            self.table.data[key] = value  # as tables.write_at, keeping the send to wait for
            sent = self.table.send_changelog(partition, key, value)
            if sent is not None:
                self._unwaited.append(sent)
        self._dirty.clear()

    def sends(self) -> list:
        """Flush; the changelog sends made since the last call (awaitable: acknowledged by the broker).

        The timer's writes are among them: one may still be on its way when a commit comes.
        """
        self.flush()
        sent, self._unwaited = self._unwaited, []
        return sent

    def revoke(self) -> list:
        """Flush, then forget and count nothing until the next assignment: a partition may come back with counts
        made elsewhere. Returns the sends to wait for before the revocation completes."""
        sent = self.sends()
        self._pending.clear()
        self._revoked_in = self._consumer_generation()
        return sent


def count_stage(stage: faust.TopicT, p: int, outcome: str) -> None:
    """Count an outcome of a stage's partition p in the counters table (written at partition p)."""
    key = f"{stage.get_topic_name()}/{p}"
    current = dict(counter_table.get(key) or {})
    current[outcome] = current.get(outcome, 0) + 1
    write_at(counter_table, p, key, current)


ingest_counters = IngestCounters(counter_table, consumer_generation=lambda: app.consumer_generation_id,
                                 assigned=lambda topic, partition: TP(topic, partition) in app.consumer.assignment(),
                                 topics=[t.get_topic_name() for t in (geo_pings, connection_logs, consents)])


async def delivered(sends: list) -> None:
    """Wait until the broker acknowledged these changelog sends (an error raises)."""
    for sent in sends:
        await sent


async def write_counts() -> None:
    """Before a commit: the counts of every offset committed are on the broker."""
    await delivered(ingest_counters.sends())


before_commit(app, write_counts)


@app.timer(0.5)
async def flush_counters() -> None:
    """Write changed counters to the table (and its changelog) at their input partition."""
    ingest_counters.flush()


@app.on_partitions_revoked.connect
async def revoke_counts(app, revoked, **kwargs) -> None:
    """Write the counts, and have them on the broker before a new owner can restore them."""
    await _delivered_or_logged(ingest_counters.revoke())


@app.on_before_shutdown.connect
async def close_counts(app, **kwargs) -> None:
    """On a clean stop: as on a revocation (the partitions' next owners restore these counts)."""
    await _delivered_or_logged(ingest_counters.revoke())


async def _delivered_or_logged(sends: list) -> None:
    try:
        await delivered(sends)
    except Exception:  # the offsets since the last commit are handled again: what matters is the next commit
        log.exception("ingest counts not written on revocation; the next owner counts from the last commit")
