"""Batch agents: Faust's consumer hands a fetched batch of records to one coroutine call.

Faust delivers every message on its own: per message it creates two tasks and waits for the
first (`Consumer._drain_messages` → `wait_first`), wraps the record in an Event, queues it into
the agent's channel and acks it. On this machine that path tops out at ~6.5k messages/s with an
agent that does nothing (bench/RESULTS.md), which is 2-4 % of what aiokafka fetches.

A batch agent keeps everything Faust gives a topic — consumer group membership and partition
assignment (so it stays co-partitioned with the tables), flow control during table recovery and
rebalances, offset commits after the producer is flushed — and replaces only the delivery: the
records of each fetched topic-partition go to `handler(tp, records)` in one await, then their
offsets are acked together. At-least-once is unchanged: a record is acked after its handler
returned, and Faust commits acked offsets only after flushing what the handler sent.
`before_commit(app, hook)` awaits a hook before each commit flushes the producer (the ingest
counters write their state there, so no committed offset is ahead of them).

Usage::

    install(app)                      # before the worker starts

    @batch_agent(app, geo_pings)
    async def ingest(tp, records):    # aiokafka ConsumerRecords of one partition, in offset order
        ...

A handler must not raise for bad data (quarantine it instead). If one raises all the same, the
batch goes to the app's `_batch_quarantine(tp, records, exc)` (streams.plumbing.deadletters:
each record dead-lettered with its position) and the stage goes on; only if that fails too (the
broker unreachable for longer than the send retries) does the exception stop the worker, as an
exception in a Faust agent does, and a restart resumes from the last commit.

The same consumer restores tables faster: while Faust recovers tables after a start or a
rebalance, fetched changelog records are applied to the tables' stores in bulk
(`BatchConsumer._recover_in_bulk`) instead of one by one through Faust's per-message path.

Faust tables place a write by the event being processed (`table[key] = value` goes to the
changelog partition of the current event). Inside a batch handler, wrap the work on one record
in `with processing(tp, record):` so table writes land on that record's partition.
"""
from __future__ import annotations

import gc
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.stores.memory import Store as MemoryStore
from faust.streams import _current_event
from faust.tables.table import Table
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP

Handler = Callable[[TP, list[Any]], Awaitable[None]]
log = logging.getLogger(__name__)

# The input batch a handler is working on: what is quarantined when its output cannot be sent.
current_batch: ContextVar[tuple[TP, list[Any]] | None] = ContextVar("current_batch", default=None)


# How long the broker may hold a fetch that finds no new data. Faust asks for 1.5 s. A worker
# reads its input and internal topics from one broker through one fetch at a time, so while a
# fetch waits on topics that are idle, data arriving on the others waits too: up to 1.5 s per hop
# (measured: p50 ping-to-crossing 3.6 s at 10k pings/s with 1.5 s, 0.25 s with 100 ms).
FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher aiokafka builds at start()
        return consumer


@dataclass
class StageStats:
    """Where a worker's consumer loop spends its time, per batch topic (for /batches/ and benchmarks)."""

    calls: int = 0
    records: int = 0
    busy_s: float = 0.0


class BatchConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer with batch delivery for the topics registered by `batch_agent`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._handled: dict[TP, tuple[int, int]] = {}  # (generation, next offset) handed to a handler

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _handlers(self) -> dict[str, Handler]:
        return getattr(self.app, "_batch_handlers", {})

    async def _wait_next_records(self, timeout: float):
        t0 = time.perf_counter()
        records, active = await super()._wait_next_records(timeout)
        stats = self.app._batch_stats
        stats["(waiting for records)"].busy_s += time.perf_counter() - t0
        if records and self.app.tables.recovery.in_recovery:
            t0 = time.perf_counter()
            n = self._recover_in_bulk(records)
            stage = stats["(table recovery)"]
            stage.busy_s += time.perf_counter() - t0
            stage.calls += 1
            stage.records += n
        handlers = self._handlers()
        if not records or not handlers:
            return records, active
        generation = self.app.consumer_generation_id
        first = getattr(self.app, "_batch_first", set())
        # Topics registered with first=True go before the rest of the same fetch (stable otherwise).
        for tp in sorted((tp for tp in records if tp.topic in handlers), key=lambda tp: tp.topic not in first):
            batch = records.pop(tp)  # never reaches the per-message path
            if not self.flow_active or self.app.consumer_generation_id != generation:
                continue  # rebalancing: not acked, so read again from the committed offset
            if not (active is None or tp in active or tp in self._buffered_partitions):
                continue  # paused (e.g. its tables are recovering): fetched again when resumed
            read = self._read_offset[tp]
            if read is not None and batch[0].offset < read:
                batch = [record for record in batch if record.offset >= read]  # as Faust drops them
                if not batch:
                    continue
            gen, handled = self._handled.get(tp, (None, 0))
            if gen == generation and batch[0].offset < handled:
                # Handled already in this generation: Faust resumes a partition after recovery before
                # it seeks it back to the committed offset, so records fetched in between come again.
                batch = [record for record in batch if record.offset >= handled]
                if not batch:
                    continue
            t0 = time.perf_counter()
            await self._handle(handlers[tp.topic], tp, batch)
            self._handled[tp] = (generation, batch[-1].offset + 1)
            await self._ack_batch(tp, batch)
            stage = stats[tp.topic]
            stage.busy_s += time.perf_counter() - t0
            stage.calls += 1
            stage.records += len(batch)
        return records, active

    async def _handle(self, handler: Handler, tp: TP, batch: list[Any]) -> None:
        """handler(tp, batch); if it raises, the batch is quarantined (the app's _batch_quarantine) instead."""
        token = current_batch.set((tp, batch))
        try:
            await handler(tp, batch)
        except Exception as exc:
            fallback = getattr(self.app, "_batch_quarantine", None)
            if fallback is None:
                raise
            log.exception("%s[%d]: the stage failed on offsets %d..%d; quarantining them", tp.topic, tp.partition,
                          batch[0].offset, batch[-1].offset)
            await fallback(tp, batch, exc)  # if this fails too (broker away), the worker stops
        finally:
            current_batch.reset(token)

    async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
        """Faust's commit (flush the producer, then commit `offsets`), after the app's before-commit hooks.

        Every offset in `offsets` was acked, so its handler had returned, before the hooks run. A hook
        that fails fails the commit, and the worker stops, as when Faust cannot send what a commit
        waits for (Faust has taken `offsets` off its acked list: skipping this commit would leave a
        gap no later commit passes). A restart resumes from the last commit.
        """
        for hook in getattr(self.app, "_before_commit", ()):
            await hook()
        return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)

    def _recover_in_bulk(self, records: dict) -> int:
        """Apply fetched changelog records of tables being recovered straight to their stores.

        Faust restores a table one changelog record at a time through the same per-message path
        as streams (~5k records/s here: minutes for a large table after every restart). Here all
        records of a fetched changelog partition but the last are applied in one pass, in offset
        order (a tombstone deletes); the last goes Faust's way, so that Faust's recovery sees the
        partition's offset move and ends recovery as before. Only for tables this applies to
        as-is (memory store, str keys, JSON values, no changelog hook), only for active
        partitions, and only when Faust's recovery queue and buffers hold nothing older.
        Returns how many records were applied.
        """
        tables = self.app.tables
        recovery = tables.recovery
        applied = 0
        for tp, batch in records.items():
            table = tables._changelogs.get(tp.topic)
            if (table is None or len(batch) < 2 or tp not in recovery.active_tps
                    or not _bulk_recoverable(table) or not tables.changelog_queue.empty()):
                continue
            seen = recovery.active_offsets.get(tp)
            bulk = [r for r in batch[:-1] if seen is None or r.offset > seen]
            if not bulk:
                continue
            recovery.flush_buffers()  # what Faust took in before goes first
            store, where = table.data.data, table.data._key_partition
            for record in bulk:
                key = orjson.loads(record.key)
                if record.value is None:
                    store.pop(key, None)
                    where.pop(key, None)
                else:
                    store[key] = orjson.loads(record.value)
                    where[key] = tp.partition
            recovery.active_offsets[tp] = bulk[-1].offset
            self._read_offset[tp] = bulk[-1].offset
            records[tp] = batch[-1:]
            applied += len(bulk)
        return applied

    async def _ack_batch(self, tp: TP, batch: list[Any]) -> None:
        """Mark a delivered batch read and acked, the way the per-message path does one by one."""
        if not batch:
            return
        read = self._read_offset[tp]
        committed = self._committed_offset[tp]
        acked, index = self._acked[tp], self._acked_index[tp]
        n = 0
        for record in batch:
            offset = record.offset
            if read and offset - read > 1:
                await self._add_gap(tp, read + 1, offset)  # compaction or transaction markers
            read = offset
            if (committed is None or offset >= committed) and offset not in index:
                index.add(offset)
                acked.append(offset)
                n += 1
        self._read_offset[tp] = read
        self._n_acked += n
        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()


def _bulk_recoverable(table: Any) -> bool:
    """Whether a table's changelog can be applied without Faust: the shape every table here has."""
    return (isinstance(table.data, MemoryStore) and table.key_type is str and table.value_type is None
            and table.key_serializer == table.value_serializer == "json" and table.window is None
            and table._on_changelog_event is None
            and type(table)._to_key is Table._to_key and type(table)._to_value is Table._to_value)


def install(app: faust.App) -> None:
    """Make `app` use the batch-capable consumer (call before the worker starts)."""
    app.transport.Consumer = BatchConsumer
    if not hasattr(app, "_batch_handlers"):
        app._batch_handlers = {}
        app._batch_first = set()
        app._batch_stats = defaultdict(StageStats)
        app._before_commit = []
        gc.callbacks.append(_gc_timer(app._batch_stats["(gc pauses)"]))


def _gc_timer(stats: StageStats):
    """A gc callback adding each cycle-collector pause to `stats` (they stop the whole worker)."""
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            stats.busy_s += time.perf_counter() - started[0]
            stats.calls += 1
            stats.records += info.get("collected", 0)

    return on_gc


def before_commit(app: faust.App, hook: Callable[[], Awaitable[None]]) -> None:
    """Await `hook()` before each offset commit (and before the producer flush that precedes it).

    A hook that sends something the commit depends on waits until the broker has it (Faust's
    producer flush waits for the messages in its buffer, not for one its buffer task is still
    handing over to the client).
    """
    install(app)
    app._before_commit.append(hook)


def stage_stats(app: faust.App) -> dict[str, StageStats]:
    """Time spent per batch topic since the worker started (wall-clock seconds inside its handler)."""
    return dict(getattr(app, "_batch_stats", {}))


def batch_agent(app: faust.App, topic: faust.TopicT, first: bool = False) -> Callable[[Handler], Handler]:
    """Register `handler(tp, records)` for every record of `topic`; Faust still subscribes and assigns it.

    first: handle this topic's records before those of other topics fetched at the same time.
    """

    def register(handler: Handler) -> Handler:
        install(app)
        for name in topic.topics:
            app._batch_handlers[name] = handler
            if first:
                app._batch_first.add(name)
        app.topics.add(topic)
        return handler

    return register


@dataclass(frozen=True, slots=True)
class _Position:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True, weakref_slot=True)
class _RecordEvent:
    """What Faust tables read from the current event: its message's topic, partition and offset."""

    message: _Position


@contextmanager
def processing(tp: TP, record: Any) -> Iterator[None]:
    """Make `record` (of partition tp) the current event for Faust tables while the block runs."""
    event = _RecordEvent(_Position(tp.topic, tp.partition, record.offset))
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
