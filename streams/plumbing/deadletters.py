"""Dead letters: every rejected or unprocessable message, pointing at its source position.

A stage never stops on one message: what it cannot handle goes to `dead-letters` with its raw
bytes (base64), its topic, partition and offset, a reason code and a message the producer can act
on, and the stage goes on.
"""
from __future__ import annotations

import logging
import time

import faust

from schemas.events import Reason, Rejection
from schemas.outputs import DeadLetter, b64
from schemas.timefmt import format_ts
from streams.app import dead_letters
from streams.plumbing.bulk import processing
from streams.plumbing.counters import count_stage
from streams.plumbing.outbox import send

log = logging.getLogger(__name__)


async def dead_letter(topic: str, partition: int, offset: int, key_b64: str | None, value_b64: str | None,
                      rejection: Rejection) -> None:
    """Send one dead letter pointing at a message's source position, keyed by its source topic."""
    await send(dead_letters, topic.encode(), DeadLetter(
        source_topic=topic, partition=partition, offset=offset, key_b64=key_b64, value_b64=value_b64,
        reason=rejection.reason.value, message=rejection.message, rejected_at=format_ts(time.time())).to_bytes())


async def dead_letter_record(tp, record, rejection: Rejection) -> None:
    """Dead-letter one record of partition tp, raw key and value intact."""
    await dead_letter(tp.topic, tp.partition, record.offset, b64(record.key), b64(record.value), rejection)


def processing_error(exc: Exception) -> Rejection:
    """The rejection of a valid-looking message the pipeline failed on (logged with its traceback)."""
    log.exception("processing failed")
    return Rejection(Reason.PROCESSING_ERROR, f"the pipeline failed on this valid-looking message "
                                              f"({type(exc).__name__}: {exc}); it is kept here for replay")


async def quarantine(tp, record, exc: Exception) -> None:
    """Dead-letter a record a stage failed on, raw bytes intact, so the stage goes on."""
    await dead_letter_record(tp, record, processing_error(exc))


async def each_guarded(stream, handle) -> None:
    """Run `handle(event)` on every event of a Faust stream; one that fails is quarantined."""
    async for event in stream.events():
        try:
            await handle(event)
        except Exception as exc:  # one bad record never stops the stage: it is kept as a dead letter
            msg = event.message
            await dead_letter(msg.topic, msg.partition, msg.offset, b64(msg.key), b64(msg.value),
                              processing_error(exc))


async def late(stage: faust.TopicT, p: int, src: list, key_b64: str | None, value_b64: str | None,
               message: str) -> None:
    """Dead-letter an event that came too late for a stage (at its original position) and count it."""
    topic, partition, offset = src
    await dead_letter(topic, partition, offset, key_b64, value_b64, Rejection(Reason.LATE_EVENT, message))
    count_stage(stage, p, "late")


async def each_record(tp, records, handle) -> None:
    """Run `handle(tp, record)` on each record as the current event; a failing one is quarantined."""
    for record in records:
        with processing(tp, record):  # table writes go to this record's partition
            try:
                await handle(tp, record)
            except Exception as exc:  # one bad record never stops the stage: it is kept as a dead letter
                await quarantine(tp, record, exc)
