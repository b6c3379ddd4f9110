"""Every topic declared once: name, partitions, retention and cleanup policy."""
from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the pipeline."""

    name: str
    key: str
    retention_ms: int  # -1: forever (compacted topics keep the latest value per key)
    compacted: bool = False
    partitions: int | None = None  # None: settings.partitions (co-partitioned with the inputs)
    internal: bool = False
    segment_ms: int | None = None  # None: the broker's (7 days), which records may outlive retention by

    def configs(self) -> dict[str, str]:
        """Kafka topic configs for this spec."""
        cfg = {"retention.ms": str(self.retention_ms),
               "cleanup.policy": "compact" if self.compacted else "delete"}
        if self.segment_ms is not None:
            cfg["segment.ms"] = str(self.segment_ms)
        if self.compacted:
            cfg.update({"min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": str(DAY_MS),
                        "segment.ms": str(6 * HOUR_MS)})
        return cfg


CROSSINGS_SEGMENT_MS = DAY_MS


def crossings_lifetime_s(settings: Settings) -> float:
    """The longest a `crossings` record stays readable, in seconds (wall clock).

    Kafka deletes a record only with its whole segment, once the segment's newest record is older
    than the retention: retention, plus the segment's roll time, plus a day for the broker's
    retention check and clock skew. The pair stage remembers who was reported with whom (to
    retract on withdrawal) for this long after a pair's last report, and no longer.
    """
    return (settings.crossings_retention_days * DAY_MS + CROSSINGS_SEGMENT_MS + DAY_MS) / 1000


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """All topics, with retention taken from settings."""
    raw = settings.raw_retention_hours * HOUR_MS
    stats = settings.stats_retention_days * DAY_MS
    return [
        TopicSpec("geo-pings", "user_id", raw),
        TopicSpec("connection-logs", "user_id", raw),
        TopicSpec("consents", "user_id", -1, compacted=True),
        TopicSpec("crossings", "user_id", settings.crossings_retention_days * DAY_MS,
                  segment_ms=CROSSINGS_SEGMENT_MS),
        TopicSpec("partner-statistics", "window+cell", stats),
        TopicSpec("connection-statistics", "window+group", stats),
        TopicSpec("dead-letters", "source topic", 30 * DAY_MS),
        TopicSpec("erasure-receipts", "user_id", 400 * DAY_MS),
        TopicSpec("inactivity-notices", "user_id", 90 * DAY_MS),
        # Internal repartition topics (raw data inside the pipeline: short retention).
        TopicSpec("crossing-cells", "spatial cell", raw, internal=True),
        TopicSpec("crossing-pairs", "user pair", raw, internal=True),
        TopicSpec("stats-cells", "coarse H3 cell", raw, internal=True),
        TopicSpec("stats-connections", "constant (one window holds every group)", raw, internal=True),
        TopicSpec("erasure-reports", "user_id", 7 * DAY_MS, internal=True),
    ]


def create_topics(settings: Settings) -> list[str]:
    """Create every missing topic and bring existing ones to the declared configs (idempotent).

    Returns one line per topic. Existing topics get only the config keys declared here (an
    incremental update: other overrides an operator set stay); partition counts are not changed.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="crosspaths-topics")
    try:
        existing = set(admin.list_topics())
        lines = []
        for spec in topic_specs(settings):
            name = settings.topic(spec.name)
            parts = spec.partitions or settings.partitions
            if name in existing:
                changed = _update_configs(admin, name, spec.configs())
                lines.append(f"updated  {name} ({', '.join(changed)})" if changed else f"exists   {name}")
                continue
            try:
                admin.create_topics([NewTopic(name, parts, 1, topic_configs=spec.configs())])
                lines.append(f"created  {name} ({parts} partitions, {spec.configs()['cleanup.policy']})")
            except TopicAlreadyExistsError:
                lines.append(f"exists   {name}")
        return lines
    finally:
        admin.close()


def _update_configs(admin, name: str, wanted: dict[str, str]) -> list[str]:
    """Set the declared configs of an existing topic that differ; returns "key=value" of each one set."""
    from kafka.admin import ConfigResource, ConfigResourceType

    current = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all")
    values = {k: v.get("value") for k, v in current.get("topic", {}).get(name, {}).items()}
    changed = {k: v for k, v in wanted.items() if values.get(k) != v}
    if changed:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=changed)], incremental=True)
    return [f"{k}={v}" for k, v in sorted(changed.items())]


def delete_topics(settings: Settings) -> None:
    """Delete every declared topic (tests and resets only)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="crosspaths-topics")
    try:
        names = [settings.topic(s.name) for s in topic_specs(settings)]
        present = [n for n in names if n in set(admin.list_topics())]
        if present:
            admin.delete_topics(present)
    finally:
        admin.close()
