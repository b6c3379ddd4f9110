"""Sending: one message per destination partition and batch, record batches, progress markers.

Every send goes through `send` or `send_many`, which never let a producer error stop a stage for
good: a transient error (the broker briefly unavailable, the producer's buffer full) is retried
with a bounded backoff for `settings.send_retry_s`; a message that can never be sent (larger than
the producer or the topic accepts) or still failing after that raises `Undeliverable` at once, and
the caller quarantines the input that produced it (`Outbox.flush` does it itself). Errors the
broker returns after the producer took a message surface only in its delivery future (Faust's
flush before a commit waits for those futures but ignores their errors): `watch` sees them and
quarantines the input positions given, so that the loss is visible in `dead-letters`.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable

import faust
import orjson
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from schemas.batches import encode_batches
from streams.app import P, app, settings
from streams.plumbing.bulk import current_batch
from streams.plumbing.tallies import tallies

log = logging.getLogger(__name__)

Position = tuple[str, int, int]  # (topic, partition, offset) of an input message
Sources = Callable[[], list[Position]]  # computed only when needed: after a failure
MAX_BACKOFF_S = 5.0


class Undeliverable(Exception):
    """A message the producer refused, or that kept failing for `settings.send_retry_s`."""

    def __init__(self, topic: str, size: int, cause: BaseException) -> None:
        super().__init__(f"could not send a {size}-byte message to {topic}: {type(cause).__name__}: {cause}")
        self.topic, self.size, self.cause = topic, size, cause


def _unwrapped(exc: BaseException) -> BaseException:
    """The Kafka error inside Faust's ProducerSendError."""
    return exc.__cause__ if isinstance(exc, ProducerSendError) and exc.__cause__ is not None else exc


def transient(exc: BaseException) -> bool:
    """Whether a producer error may go away by itself (retry), rather than never (quarantine)."""
    exc = _unwrapped(exc)
    if isinstance(exc, MessageSizeTooLargeError):
        return False
    # KafkaTimeoutError: no metadata or no room in the producer's buffer in time (broker away).
    return isinstance(exc, (KafkaTimeoutError, KafkaConnectionError)) or (isinstance(exc, KafkaError) and exc.retriable)


async def _retrying(topic: str, size: int, attempt: Callable[[], Awaitable]):
    """await attempt(), retrying transient producer errors with backoff for at most send_retry_s."""
    deadline = time.monotonic() + settings.send_retry_s
    delay = 0.1
    while True:
        try:
            return await attempt()
        except (KafkaError, ProducerSendError) as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise Undeliverable(topic, size, _unwrapped(exc)) from exc
            log.warning("sending to %s failed (%s); retrying in %.1f s", topic, _unwrapped(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


async def send(topic: faust.TopicT | str, key: bytes | None, value: bytes | None, partition: int | None = None,
               sources: Sources | None = None) -> None:
    """Hand one message to the producer directly; Undeliverable if it cannot be sent.

    Same producer, so Faust's commit still flushes it before committing the offsets of the
    input that caused it (at-least-once unchanged), without the ~30 µs of bookkeeping per
    message of `topic.send` (a FutureMessage, send signals, a callback per acknowledgement).
    `sources`: the input positions to quarantine if the broker refuses it after all (watch).
    """
    name = topic if isinstance(topic, str) else topic.get_topic_name()
    size = len(key or b"") + len(value or b"")
    future = await _retrying(name, size, lambda: app.producer.send(name, key, value, partition, None, None))
    watch(future, name, size, sources)


async def send_many(topic: faust.TopicT | str, messages: list[tuple[bytes | None, bytes | None, int]]) -> None:
    """Hand many (key, value, partition) messages to the producer as record batches, one per partition.

    aiokafka's public batch API: ~1.5 µs per message instead of ~10 µs through send(), which
    checks the topic's metadata and makes a future for every message. Same producer, so Faust's
    commit still waits for these batches before committing the input offsets. Undeliverable if
    a batch cannot be handed over; a batch the broker refuses later quarantines the input batch.
    """
    producer = app.producer._ensure_producer()
    name = topic if isinstance(topic, str) else topic.get_topic_name()
    open_batches: dict[int, object] = {}

    async def submit(batch, partition: int) -> None:
        batch.close()  # closed: ready to go without waiting for the producer's linger
        size = batch.size()
        future = await _retrying(name, size, lambda: producer.send_batch(batch, name, partition=partition))
        watch(future, name, size, None)

    for key, value, partition in messages:
        batch = open_batches.get(partition)
        if batch is None:
            batch = open_batches[partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
            await submit(batch, partition)
            batch = open_batches[partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # the first record of a batch always fits
    for partition, batch in open_batches.items():
        await submit(batch, partition)
    tallies(app).count_sent(name, len(messages))


def batch_positions() -> Sources:
    """The positions of the input batch being handled now (streams.plumbing.bulk); none outside one."""
    current = current_batch.get()
    if current is None:
        return list
    tp, records = current
    return lambda: [(tp.topic, tp.partition, record.offset) for record in records]


class _Deliveries:
    """Delivery futures whose failure must be seen: the broker refused a message the producer took."""

    def __init__(self) -> None:
        self.failed = 0
        self._tasks: set[asyncio.Task] = set()
        self.on_failure: Callable[[list[Position], str], Awaitable[None]] | None = None  # set by deadletters

    def watch(self, future, topic: str, size: int, sources: Sources | None) -> None:
        """Quarantine `sources` (default: the input batch being handled) if `future` fails."""
        if isinstance(future, asyncio.Future):
            future.add_done_callback(functools.partial(self._done, topic, size, sources or batch_positions()))

    def _done(self, topic: str, size: int, sources: Sources, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is None:
            return
        self.failed += 1
        exc = future.exception()
        positions = sources()
        log.error("the broker refused a %d-byte message to %s (%s: %s); quarantining %d input message(s)",
                  size, topic, type(exc).__name__, exc, len(positions))
        if self.on_failure is not None and positions:
            task = asyncio.ensure_future(self.on_failure(positions, f"{topic}: {type(exc).__name__}: {exc}"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


deliveries = _Deliveries()
watch = deliveries.watch


async def send_to_every_partition(topic: faust.TopicT, key: bytes, value: bytes) -> int:
    """Send the same message to each partition of a stage topic (purges, markers); returns how many."""
    for q in range(P):
        await send(topic, key, value, q)
    return P


class PartitionCounts:
    """Partitions of output topics, as the producer's metadata has them (what its partitioner uses).

    Read once per topic and kept for the worker's life: adding partitions to an output topic
    needs a worker restart (so does every Kafka client that places records by key).
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    async def of(self, topic: faust.TopicT) -> int:
        name = topic.get_topic_name()
        n = self._counts.get(name)
        if n is None:
            n = self._counts[name] = len(await app.producer._ensure_producer().partitions_for(name))
        return n


partition_counts = PartitionCounts()


def key_partition(key: str) -> int:
    """The partition of an internal record's key: a stable hash (crc32), so a key always meets the same state."""
    return zlib.crc32(key.encode()) % P


@functools.lru_cache(maxsize=1 << 16)
def cell_partition(key: str) -> int:
    """key_partition of a spatial key (cached: the keys of a city repeat)."""
    return key_partition(key)


class ProgressMarkers:
    """Each input partition's event-time progress, announced to every partition of the stages that wait for it.

    A stage's watermark is the slowest input partition's event time (minus the lateness). An input
    partition whose records all go to other stage partitions (a quiet area, few opted-in users, or
    simply the last records before a pause) would hold it back for as long as that lasts: statistics
    windows left open, detector state growing. So each input partition's progress also reaches every
    stage partition as a marker, at most `every_s` after the records that made it.
    """

    every_s = 1.0

    def __init__(self) -> None:
        self._progress: dict[tuple[faust.TopicT, str, int], float] = {}  # (stage, input topic, partition) -> ts
        self._announced: dict[tuple[faust.TopicT, str, int], float] = {}

    def note(self, stage: faust.TopicT, src: list, progress: float) -> None:
        """Input partition src = [topic, partition] has reached `progress` (its records for `stage` are sent)."""
        slot = (stage, *src)
        if progress > self._progress.get(slot, -math.inf):
            self._progress[slot] = progress

    async def announce(self) -> None:
        """Send each input partition's new progress to every partition of its stages (again next time if that fails)."""
        for slot, progress in list(self._progress.items()):
            if progress > self._announced.get(slot, -math.inf):
                topic, *src = slot
                try:
                    await send_to_every_partition(topic, b"progress", orjson.dumps({"src": src, "progress": progress}))
                except Undeliverable:
                    log.exception("progress of %s not announced; trying again at the next tick", src)
                    return
                self._announced[slot] = progress


progress_markers = ProgressMarkers()


@app.timer(ProgressMarkers.every_s)
async def announce_progress() -> None:
    """Announce input progress to the stages (ProgressMarkers)."""
    await progress_markers.announce()


def progress_marker(body: dict) -> tuple[int, float]:
    """(input partition, event time) of a progress marker (ProgressMarkers.announce), else ValueError."""
    src, progress = body.get("src"), body.get("progress")
    if not (isinstance(src, list) and len(src) == 2 and isinstance(src[1], int) and not isinstance(src[1], bool)
            and isinstance(progress, (int, float)) and not isinstance(progress, bool) and math.isfinite(progress)):
        raise ValueError("progress marker without an input partition and a finite event time")
    return src[1], float(progress)


class Outbox:
    """Internal records of one input batch, sent as one Kafka message per destination topic-partition.

    One send per record would dominate the worker's time. A message holds its records column by
    column ({"k": keys, field: values, ...}) with the input position they came from ("src":
    topic and partition, "o": offsets); the receiving stage reads them in order. A record's
    partition is a stable hash of its key, so a key always meets the same stage state.
    """

    def __init__(self, topic: str | None = None, partition: int | None = None,
                 progress_to: tuple[faust.TopicT, ...] = ()) -> None:
        self.src = [topic, partition]
        self.items: dict[tuple[faust.TopicT, int], dict[str, list]] = {}
        # Largest event time of the batch's valid input, and the stages whose watermarks wait for
        # this input partition: they hear it (ProgressMarkers) even when none of its records go there.
        self.progress = -math.inf
        self.progress_to = progress_to

    def _sources(self, data: bytes) -> list[Position]:
        """Input positions of the records in one encoded batch message."""
        topic, partition = self.src
        return [(topic, partition, o) for o in orjson.loads(data)["o"] if o is not None]

    def add(self, topic: faust.TopicT, key: str, offset: int | None, **fields) -> None:
        """Queue one record for `topic`, placed by its key (key_partition)."""
        dest = (topic, key_partition(key))
        columns = self.items.get(dest)
        if columns is None:
            columns = self.items[dest] = {"k": [], "o": [], **{name: [] for name in fields}}
        columns["k"].append(key)
        columns["o"].append(offset)
        for name, value in fields.items():
            columns[name].append(value)

    def add_columns(self, topic: faust.TopicT, partition: int, columns: dict[str, list]) -> None:
        """Queue records given column by column ("k", "o" and fields), all placed at `partition`."""
        current = self.items.get((topic, partition))
        if current is None:
            self.items[(topic, partition)] = columns
        else:
            for name, values in columns.items():
                current[name].extend(values)

    async def flush(self) -> None:
        """Send every queued record, one message per topic-partition (more if it would be too large).

        A message that cannot be sent quarantines the inputs it came from (the batch's "src" and
        "o"; without those, the input batch being handled) and the others still go.
        """
        for (topic, partition), columns in self.items.items():
            for data in encode_batches(columns, {"src": self.src}):
                sources = functools.partial(self._sources, data) if self.src[0] is not None else batch_positions()
                try:
                    await send(topic, b"batch", data, partition, sources=sources)
                except Undeliverable as exc:
                    if deliveries.on_failure is None:
                        raise
                    await deliveries.on_failure(sources(), str(exc))
        self.items.clear()
        if self.progress > -math.inf:  # only now: a marker must never overtake the records before it
            for topic in self.progress_to:
                progress_markers.note(topic, self.src, self.progress)
