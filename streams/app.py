"""The Faust app: topics, tables and agents wiring the pure core to Kafka.

Reads top to bottom: settings and core objects, app, topics, tables, helpers,
then one agent per stage:

  geo-pings, connection-logs, consents
      -> ingest (decode, validate, consent gate; rejects -> dead-letters; counters)
      -> crossing-cells (by spatial cell) -> detect -> crossing-pairs (by pair)
      -> cooldown -> crossings (one record per participant)
      -> stats-cells (by coarse H3 cell) -> windows -> partner-statistics
      -> stats-connections (by window) -> windows -> connection-statistics
"""
from __future__ import annotations

import json
import time

import faust

from anonymizers.consent import Consent, Purpose, allowed_purposes
from schemas.events import Limits, Reason, Rejection, decode
from schemas.outputs import DeadLetter, b64
from schemas.timefmt import format_ts
from streams.settings import get_settings

settings = get_settings()
LIMITS = Limits(max_bytes=settings.max_message_bytes, max_future_skew_s=settings.max_future_skew_s)
P = settings.partitions

app = faust.App(
    settings.app_id,
    broker=settings.broker_url,
    store="memory://",
    topic_partitions=P,
    topic_replication_factor=1,
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    table_standby_replicas=0,
    web_host="127.0.0.1",
    web_port=settings.web_port,
    web_in_thread=False,
    producer_linger_ms=5,
    broker_commit_every=2000,
    broker_commit_interval=1.0,
    stream_wait_empty=False,
)


def _topic(name: str, partitions: int | None = None, internal: bool = False) -> faust.TopicT:
    return app.topic(
        settings.topic(name), key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw", partitions=partitions or P, internal=internal,
    )


geo_pings = _topic("geo-pings")
connection_logs = _topic("connection-logs")
consents = _topic("consents")
crossings = _topic("crossings")
partner_statistics = _topic("partner-statistics")
connection_statistics = _topic("connection-statistics")
dead_letters = _topic("dead-letters")

# Co-partitioned with the input topics (same key, same partition count).
consent_table = app.Table("consent-state", default=None, partitions=P, key_type=str, value_type=dict)
counter_table = app.Table("counters", default=None, partitions=P, key_type=str, value_type=dict)

COUNTER_FIELDS = ("received", "accepted", "rejected", "dropped_consent")


def _count(event: faust.EventT, outcome: str) -> None:
    """Count one received message of the current event's topic-partition by outcome."""
    msg = event.message
    key = f"{msg.topic}/{msg.partition}"
    current = dict(counter_table.get(key) or {f: 0 for f in COUNTER_FIELDS})
    current["received"] += 1
    current[outcome] = current.get(outcome, 0) + 1
    counter_table[key] = current


async def _reject(event: faust.EventT, rejection: Rejection) -> None:
    """Send one rejected message to dead-letters, raw bytes intact, and count it."""
    msg = event.message
    letter = DeadLetter(
        source_topic=msg.topic, partition=msg.partition, offset=msg.offset, key_b64=b64(msg.key),
        value_b64=b64(msg.value), reason=rejection.reason.value, message=rejection.message,
        rejected_at=format_ts(time.time()),
    )
    await dead_letters.send(key=msg.topic.encode(), value=letter.to_bytes())
    _count(event, "rejected")


def _consent_of(user_id: str) -> Consent | None:
    raw = consent_table.get(user_id)
    return None if raw is None else Consent.from_dict(raw)


# ---------------------------------------------------------------------------
# Ingest


@app.agent(consents)
async def ingest_consents(stream):
    """Validate consent records and keep each user's current consent in the table."""
    async for event in stream.events():
        msg = event.message
        record = decode("consent", msg.value, LIMITS, key=msg.key)
        if isinstance(record, Rejection):
            await _reject(event, record)
            continue
        consent = Consent(
            user_id=record.user_id, updated_at=record.updated_at, geolocation=record.geolocation,
            crossings=record.crossings, partner_sharing=record.partner_sharing, deleted=record.deleted,
        )
        previous = _consent_of(consent.user_id)
        if previous is not None and previous.updated_at > consent.updated_at:
            # An older state arriving late never overrides a newer one.
            await _reject(event, Rejection(
                Reason.LATE_EVENT,
                f"updated_at={format_ts(consent.updated_at)} is older than the recorded consent "
                f"({format_ts(previous.updated_at)}); send the user's current state",
            ))
            continue
        if previous is not None and previous.deleted and not consent.deleted:
            await _reject(event, Rejection(
                Reason.BAD_VALUE, f"user_id={consent.user_id!r} was deleted; a deleted account cannot consent again",
            ))
            continue
        consent_table[consent.user_id] = consent.to_dict()
        _count(event, "accepted")
        await on_consent_change(previous, consent)


@app.agent(geo_pings)
async def ingest_pings(stream):
    """Validate pings and drop those without geolocation consent, before any other state."""
    async for event in stream.events():
        msg = event.message
        ping = decode("ping", msg.value, LIMITS, key=msg.key)
        if isinstance(ping, Rejection):
            await _reject(event, ping)
            continue
        consent = _consent_of(ping.user_id)
        purposes = allowed_purposes(consent, ping.ts, settings.consent_max_age_months)
        if Purpose.GEOLOCATION not in purposes:
            _count(event, "dropped_consent")
            continue
        _count(event, "accepted")
        await on_ping(ping, consent, purposes)


@app.agent(connection_logs)
async def ingest_connection_logs(stream):
    """Validate connection logs; logs of deleted accounts are dropped."""
    async for event in stream.events():
        msg = event.message
        log = decode("connection-log", msg.value, LIMITS, key=msg.key)
        if isinstance(log, Rejection):
            await _reject(event, log)
            continue
        consent = _consent_of(log.user_id)
        if consent is not None and consent.deleted:
            _count(event, "dropped_consent")
            continue
        _count(event, "accepted")
        await on_connection_log(log)


# ---------------------------------------------------------------------------
# Stage hooks, filled in by the crossing and statistics stages below.


async def on_ping(ping, consent: Consent | None, purposes: frozenset[Purpose]) -> None:
    """Forward an accepted ping to the stages its consent allows."""


async def on_connection_log(log) -> None:
    """Forward an accepted connection log to the statistics stage."""


async def on_consent_change(previous: Consent | None, current: Consent) -> None:
    """Apply a consent change to downstream state (retractions, purges)."""


# ---------------------------------------------------------------------------
# Web endpoints


@app.page("/counters/")
async def counters_view(web, request):
    """This worker's ingest counters per topic-partition."""
    return web.json({k: v for k, v in counter_table.items()})


@app.page("/health/")
async def health_view(web, request):
    """Liveness."""
    return web.json({"ok": True, "app": settings.app_id})


def counters_changelog_topic() -> str:
    """Name of the Kafka changelog topic behind the counters table."""
    return f"{settings.app_id}-counters-changelog"


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
