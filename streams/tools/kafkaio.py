"""Small kafka-python helpers for the CLI and offline tools: read a topic to its end, produce."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from kafka import TopicPartition

from streams.clients import admin_client, consumer as kafka_consumer
from streams.settings import Settings


def read_topic(settings: Settings, topic: str, timeout_s: float = 10.0) -> Iterator[Any]:
    """Every record of `topic` from the beginning up to its end offsets at call time (the settings' cluster)."""
    consumer = kafka_consumer(settings, enable_auto_commit=False, group_id=None,
                              consumer_timeout_ms=int(timeout_s * 1000), client_id="crosspaths-reader")
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > consumer.position(tp)}
        while remaining:
            batch = consumer.poll(timeout_ms=int(timeout_s * 1000))
            if not batch:
                break
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset < end[tp]:
                        yield rec
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        consumer.close()


def latest_by_key(settings: Settings, topic: str) -> dict[bytes, bytes | None]:
    """The last value per key of a (compacted or changelog) topic; None for tombstones."""
    out: dict[bytes, bytes | None] = {}
    for rec in read_topic(settings, topic):
        out[rec.key] = rec.value
    return out


def read_json(settings: Settings, topic: str) -> list[dict]:
    """Every record of `topic` parsed as JSON (tombstones skipped)."""
    return [json.loads(r.value) for r in read_topic(settings, topic) if r.value is not None]


def is_retriable(exc: BaseException) -> bool:
    """Whether a Kafka error may go away by itself (a coordinator or leader that moved, a node not ready, a timeout)."""
    from kafka.errors import KafkaError, KafkaTimeoutError

    # kafka-python 2.x (allowed by pyproject) does not mark KafkaTimeoutError retriable.
    return isinstance(exc, KafkaTimeoutError) or (isinstance(exc, KafkaError) and exc.retriable)


def group_lag(settings: Settings, group: str, topics: list[str], retry_s: float = 10.0) -> dict[str, int]:
    """Messages of each topic not yet committed by consumer group `group` (end offset minus committed).

    Committed offsets are read before the end offsets, so a record appended in between counts as
    lag: zero means every record up to the end was handled (Faust commits only after flushing
    what the handling sent). A partition the group never committed counts from offset 0.
    A retriable error (e.g. NotCoordinatorError while the group's coordinator moves to another
    broker) is retried for retry_s, then raised.
    """
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return _group_lag_once(settings, group, topics)
        except Exception as exc:
            if not is_retriable(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _group_lag_once(settings: Settings, group: str, topics: list[str]) -> dict[str, int]:
    admin = admin_client(settings, client_id="crosspaths-lag")
    consumer = kafka_consumer(settings, group_id=None, client_id="crosspaths-lag")
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        end = consumer.end_offsets(tps) if tps else {}
        lag = dict.fromkeys(topics, 0)
        for tp in tps:
            done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0
            lag[tp.topic] += max(0, end[tp] - done)
        return lag
    finally:
        consumer.close()
        admin.close()
