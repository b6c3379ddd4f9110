"""Every topic declared once: name, partitions, retention and cleanup policy."""
from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS


MINUTE_MS = 60 * 1000
BROKER_SEGMENT_MS = 7 * DAY_MS  # the broker's default segment roll, for topics that declare none
COMPACTION_LAG_MS = DAY_MS  # a compacted topic's overwritten or tombstoned value is compacted away within this
TOMBSTONE_MS = DAY_MS  # and the tombstone itself (the key: a user id) is kept this long after


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the pipeline, and how long anything written to it can stay on the broker."""

    name: str
    key: str
    retention_ms: int  # -1: forever (compacted topics keep the latest value per key)
    compacted: bool = False
    partitions: int | None = None  # None: settings.partitions (co-partitioned with the inputs)
    internal: bool = False
    segment_ms: int | None = None  # None: the broker's (7 days), which records may outlive retention by
    personal: bool = True  # may hold data about a user (ids, locations, raw bytes)

    @classmethod
    def within(cls, name: str, key: str, lifetime_ms: int, retention_check_ms: int, **kw) -> "TopicSpec":
        """A delete-policy topic whose every record is gone from the broker within lifetime_ms of being written."""
        segment = max(lifetime_ms // 24, 10 * MINUTE_MS)
        retention = lifetime_ms - segment - retention_check_ms
        if retention < MINUTE_MS:
            raise ValueError(f"lifetime_ms={lifetime_ms} of {name} is too short for {segment} ms segments "
                             f"and a {retention_check_ms} ms retention check")
        return cls(name, key, retention, segment_ms=segment, **kw)

    def lifetime_ms(self, retention_check_ms: int) -> int | None:
        """The longest a record stays on the broker after it was written; None: compacted (until overwritten).

        Kafka deletes a record with its whole segment, once the segment's newest record is older than
        the retention, at the broker's next retention check: retention + segment roll + check interval.
        Records carry the broker's append time (LogAppendTime), so a producer's clock cannot stretch it.
        """
        if self.compacted:
            return None
        return self.retention_ms + (self.segment_ms or BROKER_SEGMENT_MS) + retention_check_ms

    def erased_within_ms(self, retention_check_ms: int) -> int:
        """After a user's erasure, the longest any record about them stays: their records' lifetime, or for a
        compacted topic, the time to compact a tombstoned key away and then drop the tombstone itself."""
        lifetime = self.lifetime_ms(retention_check_ms)
        if lifetime is not None:
            return lifetime
        return (self.segment_ms or BROKER_SEGMENT_MS) + COMPACTION_LAG_MS + TOMBSTONE_MS + retention_check_ms

    def configs(self) -> dict[str, str]:
        """Kafka topic configs for this spec."""
        cfg = {"retention.ms": str(self.retention_ms),
               "cleanup.policy": "compact" if self.compacted else "delete"}
        if self.segment_ms is not None:
            cfg["segment.ms"] = str(self.segment_ms)
        if self.personal:
            cfg["message.timestamp.type"] = "LogAppendTime"  # lifetimes run on the broker's clock
        if self.compacted:
            cfg.update({"min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": str(TOMBSTONE_MS),
                        "max.compaction.lag.ms": str(COMPACTION_LAG_MS), "segment.ms": str(6 * HOUR_MS)})
        return cfg


def crossings_lifetime_s(settings: Settings) -> float:
    """The longest a `crossings` record stays readable, in seconds (wall clock), with an hour to spare.

    The pair stage remembers who was reported with whom (to retract on withdrawal) for this long
    after a pair's last report, and no longer.
    """
    spec = {s.name: s for s in topic_specs(settings)}["crossings"]
    return (spec.lifetime_ms(settings.broker_retention_check_ms) + HOUR_MS) / 1000


# The worker's tables (streams/app.py), whose changelog topics `topics create` makes with bounded
# compaction (Faust would make them with the broker's defaults: no bound on when a tombstoned
# value is compacted away). A test checks this list against the app's tables.
TABLES = ("consent-state", "counters", "activity", "erased", "pair-last", "pair-guard", "location-members",
          "location-published", "connection-members", "connection-published", "detector-resume", "receipt-drafts")


def changelog_specs(settings: Settings) -> list[TopicSpec]:
    """The changelog topics of the worker's tables (full names: the app id, not the topic prefix)."""
    return [TopicSpec(f"{settings.app_id}-{table}-changelog", "table key", -1, compacted=True, internal=True)
            for table in TABLES]


def erasure_horizons(settings: Settings) -> dict[str, int]:
    """Per topic that may hold data about a user (full names): how long after an erasure the last copy can stay, ms.

    Records written before the erasure are gone within their topic's lifetime; compacted topics and
    changelogs drop the user's tombstoned keys within compaction lag + tombstone retention. The
    erasure receipts themselves are left out: a receipt is the proof of the erasure, kept 400 days.
    """
    check = settings.broker_retention_check_ms
    horizons = {settings.topic(spec.name): spec.erased_within_ms(check) for spec in topic_specs(settings)
                if spec.personal and spec.name != "erasure-receipts"}
    horizons.update({spec.name: spec.erased_within_ms(check) for spec in changelog_specs(settings)})
    return horizons


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """All topics, each with a bound on how long a record stays (lifetimes from settings)."""
    raw = settings.raw_lifetime_hours * HOUR_MS
    check = settings.broker_retention_check_ms
    stats = settings.stats_retention_days * DAY_MS

    def within(name: str, key: str, lifetime_ms: int, **kw) -> TopicSpec:
        return TopicSpec.within(name, key, lifetime_ms, check, **kw)

    return [
        within("geo-pings", "user_id", raw),
        within("connection-logs", "user_id", raw),
        TopicSpec("consents", "user_id", -1, compacted=True),
        TopicSpec("crossings", "user_id", settings.crossings_retention_days * DAY_MS, segment_ms=DAY_MS),
        TopicSpec("partner-statistics", "window+region", stats, personal=False),
        TopicSpec("connection-statistics", "window+group", stats, personal=False),
        TopicSpec("dead-letters", "source topic", 30 * DAY_MS, segment_ms=DAY_MS),
        TopicSpec("erasure-receipts", "user_id", 400 * DAY_MS, segment_ms=DAY_MS),
        TopicSpec("inactivity-notices", "user_id", 90 * DAY_MS, segment_ms=DAY_MS),
        # Internal repartition topics: raw data inside the pipeline, kept no longer than the raw inputs.
        within("crossing-cells", "spatial cell", raw, internal=True),
        within("crossing-pairs", "user pair", raw, internal=True),
        within("stats-cells", "coarse H3 cell", raw, internal=True),
        within("stats-connections", "constant (one window holds every group)", raw, internal=True),
        within("erasure-reports", "user_id", raw, internal=True),
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
        declared = [(settings.topic(spec.name), spec) for spec in topic_specs(settings)]
        declared += [(spec.name, spec) for spec in changelog_specs(settings)]
        for name, spec in declared:
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
