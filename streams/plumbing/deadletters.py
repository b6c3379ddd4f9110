"""Dead letters: every rejected or unprocessable message, pointing at its source position.

A stage never stops on one message: what it cannot handle goes to `dead-letters` with its
topic, partition and offset, a reason code and a message the producer can act on, and the stage
goes on. A dead letter is bounded whatever the message (schemas.outputs.DeadLetter): the key and
value up to `settings.dead_letter_prefix_bytes`, beyond that their first bytes, full size and
SHA-256; the whole message stays at its position until the topic's retention.
"""
from __future__ import annotations

import logging
import time

import faust

from schemas.events import Reason, Rejection
from schemas.outputs import DeadLetter
from schemas.timefmt import format_ts
from streams.app import app, dead_letters, settings
from streams.plumbing.bulk import processing
from streams.plumbing.counters import count_stage, ingest_counters
from streams.plumbing.outbox import Position, Undeliverable, deliveries, send, transient
from streams.plumbing.tallies import tallies

log = logging.getLogger(__name__)


async def dead_letter(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                      rejection: Rejection) -> None:
    """Send one dead letter pointing at a message's source position, keyed by its source topic."""
    letter = DeadLetter.of(topic, partition, offset, key, value, rejection.reason.value, rejection.message,
                           format_ts(time.time()), settings.dead_letter_prefix_bytes)
    tallies(app).count_rejected(topic, rejection.reason.value)
    try:
        await send(dead_letters, topic.encode(), letter.to_bytes(), sources=list)
    except Undeliverable as exc:
        if transient(exc.cause):
            raise  # not its size: the broker is away for longer than the retries (the worker stops)
        # The topic's max.message.bytes is set below the prefix: the position alone, then.
        log.error("dead letter of %s[%d]@%d too large for %s (%s); sent without the raw bytes",
                  topic, partition, offset, exc.topic, exc.cause)
        bare = DeadLetter.of(topic, partition, offset, key, value, rejection.reason.value,
                             rejection.message[:500], letter.rejected_at, prefix_bytes=0)
        await send(dead_letters, topic.encode(), bare.to_bytes(), sources=list)


async def dead_letter_record(tp, record, rejection: Rejection) -> None:
    """Dead-letter one record of partition tp (key and value bounded, with sizes and hashes)."""
    await dead_letter(tp.topic, tp.partition, record.offset, record.key, record.value, rejection)


def processing_error(exc: Exception) -> Rejection:
    """The rejection of a valid-looking message the pipeline failed on (logged with its traceback)."""
    log.exception("processing failed")
    return Rejection(Reason.PROCESSING_ERROR, f"the pipeline failed on this valid-looking message "
                                              f"({type(exc).__name__}: {exc}); it is kept here for replay")


async def quarantine(tp, record, exc: Exception) -> None:
    """Dead-letter a record a stage failed on, so the stage goes on."""
    await dead_letter_record(tp, record, processing_error(exc))


async def quarantine_batch(tp, records, exc: Exception) -> None:
    """Dead-letter every record of a batch whose handler failed (streams.plumbing.bulk's last resort).

    Input records its handler had not counted yet are counted as rejected: every input message is
    accounted for.
    """
    rejection = processing_error(exc)
    for record in records:
        await dead_letter_record(tp, record, rejection)
    ingest_counters.count_rest(tp.topic, tp.partition, [record.offset for record in records], "rejected")


async def undeliverable(positions: list[Position], why: str) -> None:
    """Dead-letter the input messages whose output could not be sent (streams.plumbing.outbox)."""
    rejection = Rejection(Reason.UNDELIVERABLE, f"what the pipeline made of this message could not be sent ({why}); "
                                                "it is kept here for replay")
    for topic, partition, offset in positions:
        await dead_letter(topic, partition, offset, None, None, rejection)


app._batch_quarantine = quarantine_batch
deliveries.on_failure = undeliverable


async def each_guarded(stream, handle) -> None:
    """Run `handle(event)` on every event of a Faust stream; one that fails is quarantined."""
    async for event in stream.events():
        try:
            await handle(event)
        except Exception as exc:  # one bad record never stops the stage: it is kept as a dead letter
            msg = event.message
            await dead_letter(msg.topic, msg.partition, msg.offset, msg.key, msg.value, processing_error(exc))


async def late(stage: faust.TopicT, p: int, src: list, key: bytes | None, value: bytes | None,
               message: str) -> None:
    """Dead-letter an event that came too late for a stage (at its original position) and count it."""
    topic, partition, offset = src
    await dead_letter(topic, partition, offset, key, value, Rejection(Reason.LATE_EVENT, message))
    count_stage(stage, p, "late")


async def each_record(tp, records, handle) -> None:
    """Run `handle(tp, record)` on each record as the current event; a failing one is quarantined."""
    for record in records:
        with processing(tp, record):  # table writes go to this record's partition
            try:
                await handle(tp, record)
            except Exception as exc:  # one bad record never stops the stage: it is kept as a dead letter
                await quarantine(tp, record, exc)
