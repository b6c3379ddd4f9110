"""Sending: one message per destination partition and batch, record batches, progress markers."""
from __future__ import annotations

import functools
import math
import zlib

import faust
import orjson

from schemas.batches import encode_batches
from streams.app import P, app


async def send(topic: faust.TopicT, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
    """Hand one message to the producer directly.

    Same producer, so Faust's commit still flushes it before committing the offsets of the
    input that caused it (at-least-once unchanged), without the ~30 µs of bookkeeping per
    message of `topic.send` (a FutureMessage, send signals, a callback per acknowledgement).
    """
    await app.producer.send(topic.get_topic_name(), key, value, partition, None, None)


async def send_many(topic: faust.TopicT | str, messages: list[tuple[bytes | None, bytes | None, int]]) -> None:
    """Hand many (key, value, partition) messages to the producer as record batches, one per partition.

    aiokafka's public batch API: ~1.5 µs per message instead of ~10 µs through send(), which
    checks the topic's metadata and makes a future for every message. Same producer, so Faust's
    commit still waits for these batches before committing the input offsets.
    """
    producer = app.producer._ensure_producer()
    name = topic if isinstance(topic, str) else topic.get_topic_name()
    open_batches: dict[int, object] = {}
    for key, value, partition in messages:
        batch = open_batches.get(partition)
        if batch is None:
            batch = open_batches[partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
            batch.close()
            await producer.send_batch(batch, name, partition=partition)
            batch = open_batches[partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    for partition, batch in open_batches.items():
        batch.close()  # closed: ready to go without waiting for the producer's linger
        await producer.send_batch(batch, name, partition=partition)


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
        """Send each input partition's new progress to every partition of its stages."""
        for slot, progress in list(self._progress.items()):
            if progress > self._announced.get(slot, -math.inf):
                topic, *src = slot
                await send_to_every_partition(topic, b"progress", orjson.dumps({"src": src, "progress": progress}))
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
        """Send every queued record, one message per topic-partition (more if it would be too large)."""
        for (topic, partition), columns in self.items.items():
            for data in encode_batches(columns, {"src": self.src}):
                await send(topic, b"batch", data, partition)
        self.items.clear()
        if self.progress > -math.inf:  # only now: a marker must never overtake the records before it
            for topic in self.progress_to:
                progress_markers.note(topic, self.src, self.progress)
