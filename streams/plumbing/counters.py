"""How many messages each input partition received, by outcome; and what stages counted (late...).

received = accepted + rejected + dropped_consent, per input topic-partition: the reconciliation
`crosspaths report` and the tests check. Counts live in the changelogged `counters` table.
"""
from __future__ import annotations

import faust

from streams.app import app, counter_table
from streams.plumbing.tables import write_at

COUNTER_FIELDS = ("received", "accepted", "rejected", "dropped_consent")


class IngestCounters:
    """Counts of the input partitions this worker reads, kept in memory and written twice a second.

    A table write per message would double the Kafka sends of the ingest path, so counts gather
    here and `flush` writes each changed one to the table (and its changelog) at its partition.
    """

    def __init__(self, table) -> None:
        self.table = table
        self._pending: dict[tuple[str, int], dict] = {}
        self._dirty: set[tuple[str, int]] = set()

    def count(self, topic: str, partition: int, outcome: str, n: int = 1) -> None:
        """Count n received messages of a topic-partition with this outcome."""
        slot = (topic, partition)
        current = self._pending.get(slot)
        if current is None:
            restored = self.table.get(f"{topic}/{partition}")
            current = self._pending[slot] = dict(restored or {f: 0 for f in COUNTER_FIELDS})
        current["received"] += n
        current[outcome] = current.get(outcome, 0) + n
        self._dirty.add(slot)

    def flush(self) -> None:
        """Write changed counts to the table at their input partition."""
        for topic, partition in list(self._dirty):
            write_at(self.table, partition, f"{topic}/{partition}", dict(self._pending[(topic, partition)]))
        self._dirty.clear()

    def forget(self) -> None:
        """Flush, then forget: a partition may come back with counts made elsewhere."""
        self.flush()
        self._pending.clear()


def count_stage(stage: faust.TopicT, p: int, outcome: str) -> None:
    """Count an outcome of a stage's partition p in the counters table (written at partition p)."""
    key = f"{stage.get_topic_name()}/{p}"
    current = dict(counter_table.get(key) or {})
    current[outcome] = current.get(outcome, 0) + 1
    write_at(counter_table, p, key, current)


ingest_counters = IngestCounters(counter_table)


@app.timer(0.5)
async def flush_counters() -> None:
    """Write changed counters to the table (and its changelog) at their input partition."""
    ingest_counters.flush()


@app.on_partitions_revoked.connect
async def forget_counts(app, revoked, **kwargs) -> None:
    """Flush, then forget in-memory counters: a partition may come back with counts made elsewhere."""
    ingest_counters.forget()
