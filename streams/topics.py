"""Every topic declared once: name, partitions, retention and cleanup policy."""
from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS


MINUTE_MS = 60 * 1000
BROKER_SEGMENT_MS = 7 * DAY_MS  # the broker's default segment roll, for topics that declare none
COMPACTED_SEGMENT_MS = 6 * HOUR_MS  # a compacted topic's segment roll, at most (compaction skips the active one)


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
    # Compacted topics: an overwritten or tombstoned value is compacted away within compaction_lag_ms
    # of being written (plus the segment roll), and the tombstone itself (its key) kept tombstone_ms more.
    compaction_lag_ms: int = DAY_MS
    tombstone_ms: int = DAY_MS
    cleaner_slack_ms: int = 0  # allowed per cleaning pass for the broker's cleaner threads to reach the log

    @classmethod
    def within(cls, name: str, key: str, lifetime_ms: int, retention_check_ms: int, **kw) -> "TopicSpec":
        """A delete-policy topic whose every record is gone from the broker within lifetime_ms of being written."""
        segment = max(lifetime_ms // 24, min(10 * MINUTE_MS, lifetime_ms // 4))  # short lifetimes: tests
        retention = lifetime_ms - segment - retention_check_ms
        if retention < 1000:
            raise ValueError(f"lifetime_ms={lifetime_ms} of {name} is too short for {segment} ms segments "
                             f"and a {retention_check_ms} ms retention check")
        return cls(name, key, retention, segment_ms=segment, **kw)

    @property
    def segment(self) -> int:
        """The segment roll, ms: declared, else for compacted topics no longer than their compaction lag."""
        if self.segment_ms is not None:
            return self.segment_ms
        return min(COMPACTED_SEGMENT_MS, self.compaction_lag_ms) if self.compacted else BROKER_SEGMENT_MS

    def lifetime_ms(self, retention_check_ms: int) -> int | None:
        """The longest a record stays on the broker after it was written; None: forever unless overwritten.

        Kafka deletes a record with its whole segment, once the segment's newest record is older than
        the retention, at the broker's next retention check: retention + segment roll + check interval.
        Records carry the broker's append time (LogAppendTime), so a producer's clock cannot stretch it.
        A compacted topic with a retention (compact,delete) deletes by time too.
        """
        if self.retention_ms < 0:
            return None
        return self.retention_ms + self.segment + retention_check_ms

    def erased_within_ms(self, retention_check_ms: int) -> int:
        """After a user's erasure, the longest any record about them stays: their records' lifetime, or for a
        compacted topic (where erasure tombstones the user's keys), if sooner, two cleaning passes.

        The cleaner skips the active segment (rolled on the next append after the segment time) and
        takes a segment at the latest when its oldest record is older than the compaction lag: a first
        pass drops the tombstoned values and sets the tombstone's delete horizon (tombstone_ms on); a
        second pass, over segments rolled and aged after that horizon, drops the tombstone (its key).
        """
        lifetime = self.lifetime_ms(retention_check_ms)
        if not self.compacted:
            return lifetime
        one_pass = self.segment + self.compaction_lag_ms + self.cleaner_slack_ms
        compacted = one_pass + self.tombstone_ms + one_pass + retention_check_ms
        return compacted if lifetime is None else min(lifetime, compacted)

    def configs(self) -> dict[str, str]:
        """Kafka topic configs for this spec."""
        policy = ("compact,delete" if self.retention_ms >= 0 else "compact") if self.compacted else "delete"
        cfg = {"retention.ms": str(self.retention_ms), "cleanup.policy": policy, "segment.ms": str(self.segment)}
        if self.personal:
            cfg["message.timestamp.type"] = "LogAppendTime"  # lifetimes run on the broker's clock
        if self.compacted:
            cfg.update({"min.cleanable.dirty.ratio": "0.1", "delete.retention.ms": str(self.tombstone_ms),
                        "max.compaction.lag.ms": str(self.compaction_lag_ms)})
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
          "location-published", "connection-members", "connection-published", "detector-resume", "receipt-drafts", "dp-bound")


def changelog_specs(settings: Settings) -> list[TopicSpec]:
    """The changelog topics of the worker's tables (full names: the app id, not the topic prefix)."""
    return [TopicSpec(f"{settings.app_id}-{table}-changelog", "table key", -1, compacted=True, internal=True,
                      **_compaction(settings)) for table in TABLES]


def _compaction(settings: Settings) -> dict[str, int]:
    return {"compaction_lag_ms": int(settings.compaction_lag_s * 1000),
            "tombstone_ms": int(settings.tombstone_retention_s * 1000),
            "cleaner_slack_ms": int(settings.cleaner_slack_s * 1000)}


def erasure_horizons(settings: Settings) -> dict[str, int]:
    """Per topic that may hold data about a user (full names): how long after an erasure the last copy can stay, ms.

    Records written before the erasure are gone within their topic's lifetime; compacted topics and
    changelogs drop the user's tombstoned keys within compaction lag + tombstone retention. The
    erasure receipts, the proof of the erasure, name the user by a hash only and are not personal.
    """
    check = settings.broker_retention_check_ms
    horizons = {settings.topic(spec.name): spec.erased_within_ms(check) for spec in topic_specs(settings)
                if spec.personal}
    horizons.update({spec.name: spec.erased_within_ms(check) for spec in changelog_specs(settings)})
    return horizons


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """All topics, each with a bound on how long a record stays (lifetimes from settings)."""
    raw = int(settings.raw_lifetime_hours * HOUR_MS)
    check = settings.broker_retention_check_ms
    stats = settings.stats_retention_days * DAY_MS
    compaction = _compaction(settings)

    def within(name: str, key: str, lifetime_ms: int, **kw) -> TopicSpec:
        return TopicSpec.within(name, key, lifetime_ms, check, **kw)

    return [
        within("geo-pings", "user_id", raw),
        within("connection-logs", "user_id", raw),
        TopicSpec("consents", "user_id", -1, compacted=True, **compaction),
        # One record per participant and other party (the pair's current crossing), compacted: an
        # erasure or withdrawal tombstones both keys of each pair, and compaction removes them.
        TopicSpec("crossings", "participant|other (placed by participant)", settings.crossings_retention_days * DAY_MS,
                  compacted=True, **compaction),
        TopicSpec("partner-statistics", "window+region", stats, personal=False),
        TopicSpec("connection-statistics", "window+group", stats, personal=False),
        # A dead letter is a copy of (a prefix of) a raw input record: kept no longer than the raw inputs.
        within("dead-letters", "source topic", raw),
        TopicSpec("erasure-receipts", "SHA-256 of user_id", 400 * DAY_MS, segment_ms=DAY_MS, personal=False),
        # Events for the app's notification service to act on (erasure comes 30 days later), kept no
        # longer than the raw inputs: not compacted, so no erasure waits for a rarely written topic to roll.
        within("inactivity-notices", "user_id", raw),
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
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from streams.clients import admin_client

    admin = admin_client(settings, client_id="crosspaths-topics")
    try:
        existing = set(admin.list_topics())
        warning = replication_warning(len(admin.describe_cluster()["brokers"]), settings.replication_factor)
        lines = [warning] if warning else []
        declared = [(settings.topic(spec.name), spec) for spec in topic_specs(settings)]
        declared += [(spec.name, spec) for spec in changelog_specs(settings)]
        for name, spec in declared:
            parts = spec.partitions or settings.partitions
            configs = {**spec.configs(), **replication_configs(settings)}
            if name in existing:
                changed = _update_configs(admin, name, configs)
                lines.append(f"updated  {name} ({', '.join(changed)})" if changed else f"exists   {name}")
                continue
            try:
                admin.create_topics([NewTopic(name, parts, settings.replication_factor, topic_configs=configs)])
                lines.append(f"created  {name} ({parts} partitions, {settings.replication_factor} replicas, "
                             f"{configs['cleanup.policy']})")
            except TopicAlreadyExistsError:
                lines.append(f"exists   {name}")
        return lines
    finally:
        admin.close()


def replication_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of the replication settings: how many replicas must have a record before acks=all."""
    return {"min.insync.replicas": str(settings.min_insync_replicas)}


def replication_warning(brokers: int, replication_factor: int) -> str | None:
    """A warning when a cluster of 3 or more brokers gets topics that one or two lost brokers would lose."""
    if brokers >= 3 and replication_factor < 3:
        return (f"WARNING  the cluster has {brokers} brokers but topics get replication_factor={replication_factor}: "
                f"losing {replication_factor} broker(s) loses data and state; set CROSSPATHS_REPLICATION_FACTOR=3 "
                f"and CROSSPATHS_MIN_INSYNC_REPLICAS=2")
    return None


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
    from streams.clients import admin_client

    admin = admin_client(settings, client_id="crosspaths-topics")
    try:
        names = [settings.topic(s.name) for s in topic_specs(settings)]
        present = [n for n in names if n in set(admin.list_topics())]
        if present:
            admin.delete_topics(present)
    finally:
        admin.close()
