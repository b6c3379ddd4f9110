"""Find every trace of a user: in state (compacted topics, table changelogs, worker memory) and in logs."""
from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient

from anonymizers.pseudonym import Pseudonymizer
from anonymizers.retention import erasure_tag, receipt_subject
from anonymizers.windows import recent_windows
from schemas.timefmt import format_ts
from streams.clients import admin_client
from streams.tools.kafkaio import read_topic
from streams.settings import Settings, pseudonym_secret
from streams.topics import erasure_horizons

# Characters that may surround an id without being part of it (ids are [A-Za-z0-9._:@-]).
_EDGE = rb"A-Za-z0-9._@-"


@dataclass
class AuditReport:
    """Where a user id (or its pseudonyms) was found."""

    user_id: str
    state: list[str] = field(default_factory=list)  # live state: must be empty after an erasure
    logs: list[str] = field(default_factory=list)  # append-only topics, gone when retention expires
    expected: list[str] = field(default_factory=list)  # receipts and keyed erasure markers, by design

    @property
    def clean(self) -> bool:
        """Nothing about the user is left in state."""
        return not self.state


def _needles(settings: Settings, user_id: str) -> list[re.Pattern]:
    import time

    pseudo = Pseudonymizer(pseudonym_secret(settings), settings.pseudonym_rotation_s)
    words = [user_id.encode()] + [pseudo.pseudonym(user_id, ws).encode()
                                  for ws in recent_windows(time.time(), settings.stats_window_s)]
    return [re.compile(rb"(?<![" + _EDGE + rb"])" + re.escape(w) + rb"(?![" + _EDGE + rb"])") for w in words]


def _embedded(value: bytes | None) -> list[bytes]:
    """Base64 payloads inside a dead letter, decoded, so the audit sees the raw message too."""
    import base64

    if not value or b"_b64" not in value:
        return []
    try:
        doc = json.loads(value)
        return [base64.b64decode(doc[k]) for k in ("key_b64", "value_b64") if doc.get(k)]
    except (ValueError, TypeError):
        return []


def _ours(settings: Settings, topic: str) -> bool:
    """Whether a topic belongs to this deployment (its prefix, or its app's changelogs)."""
    from streams.topics import topic_specs

    return topic in {settings.topic(s.name) for s in topic_specs(settings)} or topic.startswith(f"{settings.app_id}-")


def _hit(patterns: list[re.Pattern], *blobs: bytes | None) -> bool:
    return any(b and p.search(b) for p in patterns for b in blobs)


def audit_user(settings: Settings, user_id: str, worker_urls: tuple[str, ...] = ()) -> AuditReport:
    """Scan this deployment's topics (and workers' memory, if given) for any trace of user_id."""
    report = AuditReport(user_id)
    patterns = _needles(settings, user_id)
    admin = admin_client(settings, client_id="crosspaths-audit")
    try:
        names = sorted(t for t in admin.list_topics() if _ours(settings, t))
        configs = _cleanup_policies(admin, names)
    finally:
        admin.close()
    receipts, subject = settings.topic("erasure-receipts"), receipt_subject(user_id).encode()
    tag = erasure_tag(pseudonym_secret(settings), user_id).encode()
    lifetimes = _lifetimes_ms(settings)
    horizons = erasure_horizons(settings)
    for name in names:
        compacted = "compact" in configs.get(name, "") or name.endswith("-changelog")
        latest: dict[bytes | None, bytes | None] = {}
        occurrences, newest_ms = 0, 0
        for rec in read_topic(settings, name):
            if name == receipts:
                occurrences += rec.key == subject  # receipts name the user by a hash of the id only
            elif compacted:
                latest[rec.key] = rec.value
                if rec.key is not None and tag in rec.key and rec.value is not None:
                    report.expected.append(f"{name}: keyed erasure marker (not reversible without the secret)")
                if _hit(patterns, rec.key, rec.value):
                    occurrences += 1
                    newest_ms = max(newest_ms, rec.timestamp)
            elif _hit(patterns, rec.key, rec.value, *_embedded(rec.value)):
                occurrences += 1
                newest_ms = max(newest_ms, rec.timestamp)
        if compacted:
            live = sum(1 for k, v in latest.items() if v is not None and _hit(patterns, k, v))
            if live:
                report.state.append(f"{name}: {live} live record(s) (compacted/changelog: state)")
            elif occurrences:  # overwritten or tombstoned: gone once compaction has run (twice, for the tombstone)
                line = f"{name}: {occurrences} record(s) tombstoned or overwritten, awaiting compaction"
                if name in horizons:
                    line += f", the last gone by {format_ts((newest_ms + horizons[name]) / 1000)}"
                report.logs.append(line)
        elif occurrences:
            line = f"{name}: {occurrences} record(s)"
            if name in lifetimes:  # the newest one's write time (the broker's) + the topic's lifetime
                line += f", the last gone by {format_ts((newest_ms + lifetimes[name]) / 1000)}"
            if name == receipts:
                report.expected.append(f"{name}: erasure receipts: {occurrences}, naming the user by the SHA-256 of the id (kept as proof)")
            else:
                report.logs.append(line + " (append-only; deleted by retention)")
    for url in worker_urls:
        query = urllib.parse.urlencode({"user": user_id})
        with urllib.request.urlopen(f"{url.rstrip('/')}/audit/?{query}", timeout=10) as r:
            found = json.loads(r.read())["found"]
        for what, n in found.items():
            report.state.append(f"worker {url} memory: {what} = {n}")
    return report


def _lifetimes_ms(settings: Settings) -> dict[str, int]:
    """The declared lifetime of each topic that deletes by time (full names), ms: how long a record stays after its write."""
    from streams.topics import topic_specs

    check = settings.broker_retention_check_ms
    lifetimes = {settings.topic(spec.name): spec.lifetime_ms(check) for spec in topic_specs(settings)}
    return {name: ms for name, ms in lifetimes.items() if ms is not None}


def _cleanup_policies(admin: KafkaAdminClient, names: list[str]) -> dict[str, str]:
    from kafka.admin import ConfigResource, ConfigResourceType

    result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    return {name: cfg.get("cleanup.policy", {}).get("value", "delete")
            for name, cfg in result.get("topic", {}).items()}


def format_report(report: AuditReport) -> str:
    """The audit as text for an operator."""
    lines = [f"Audit of user {report.user_id!r}"]
    lines.append("State (must be empty after an erasure):")
    lines += [f"  FOUND {s}" for s in report.state] or ["  nothing"]
    lines.append("Copies on the broker that are no longer state (gone by the date each line gives):")
    lines += [f"  {s}" for s in report.logs] or ["  nothing"]
    lines.append("Kept by design:")
    lines += [f"  {s}" for s in report.expected] or ["  nothing"]
    return "\n".join(lines)


def export_user(settings: Settings, user_id: str) -> dict:
    """Everything the pipeline holds about one user, as one JSON-ready document (an access request).

    The counterpart of erasure: the consent state on record, the crossings currently shown to the
    user, the raw pings and connection logs the input topics still retain (keyed by the user, as
    producers send them), inactivity notices and erasure receipts. Partner and connection statistics
    are left out: they are counts of >= k users with no identifier, so nothing in them is about one
    user. Each retained record says when the broker will have dropped it (its topic's lifetime).
    """
    from streams.tools.kafkaio import latest_by_key
    from streams.tools.report import current_crossings, read_crossings

    key = user_id.encode()
    lifetimes = _lifetimes_ms(settings)

    def keyed(name: str, key: bytes = key) -> list[dict]:
        topic = settings.topic(name)
        out = []
        for rec in read_topic(settings, topic):
            if rec.key != key or rec.value is None:
                continue
            try:
                value = json.loads(rec.value)
            except ValueError:
                value = {"unreadable": True, "bytes": len(rec.value)}  # rejected by the worker: see dead-letters
            out.append({"partition": rec.partition, "offset": rec.offset,
                        "written_at": format_ts(rec.timestamp / 1000),
                        "gone_by": format_ts((rec.timestamp + lifetimes[topic]) / 1000), "record": value})
        return out

    dead_letters = []  # the user's own rejected messages (the source key is the user id)
    for rec in read_topic(settings, settings.topic("dead-letters")):
        letter = json.loads(rec.value) if rec.value else {}
        if letter.get("key_b64") and base64.b64decode(letter["key_b64"]) == key:
            dead_letters.append({k: letter.get(k) for k in ("source_topic", "partition", "offset", "reason",
                                                             "message", "rejected_at")})
    consent = latest_by_key(settings, settings.topic("consents")).get(key)
    shown = current_crossings(read_crossings(settings)).get(user_id, {})
    return {
        "user_id": user_id,
        "generated_at": format_ts(time.time()),
        "consent": json.loads(consent) if consent else None,
        "crossings_shown": [shown[other] for other in sorted(shown)],
        "geo_pings": keyed("geo-pings"),
        "connection_logs": keyed("connection-logs"),
        "rejected_messages": dead_letters,
        "inactivity_notices": keyed("inactivity-notices"),
        "erasure_receipts": keyed("erasure-receipts", receipt_subject(user_id).encode()),
    }
