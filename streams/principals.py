"""Who may read and write what on the broker: the principals of the pipeline and their Kafka ACLs.

The table, declared once, is plain data: `crosspaths acl apply` turns it into the cluster's ACLs
(streams/tools/acl.py), `crosspaths broker start --secure` makes a SCRAM credential per principal.
With `allow.everyone.if.no.acl.found=false`, what is not granted here is denied:

- pipeline: the workers. Reads and writes every topic of the pipeline (inputs, internal, outputs;
  it writes tombstones to `consents`), its consumer group, and its table changelogs and Faust's own
  topics, all named after the app id (a PREFIXED pattern).
- producer: the mobile backends. Writes the three input topics, idempotently; reads nothing.
- crossings-reader: the crossing-profile feature. Reads `crossings`, with its own consumer group.
- partner: analysts and partners. Reads the two k-anonymized statistics topics, with its own group.
- admin: the operator (creates topics, sets configs and ACLs); a super user of the local broker.
Privacy reason: raw pings (coordinates), connection logs (IPs), consents, crossings (who met whom),
dead letters (raw bytes) and changelogs hold personal data; only the pipeline may read them.
"""
from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings
from streams.topics import topic_specs

INPUTS = ("geo-pings", "connection-logs", "consents")
STATISTICS = ("partner-statistics", "connection-statistics")
PRINCIPALS = ("pipeline", "producer", "crossings-reader", "partner", "admin")
ADMIN = "admin"
CLUSTER = "kafka-cluster"  # the one name of Kafka's CLUSTER resource
WILDCARD = "*"  # a LITERAL "*" matches every resource of its type

RESOURCE_TYPES = ("topic", "group", "cluster")
PATTERNS = ("literal", "prefixed")
OPERATIONS = ("all", "read", "write", "create", "delete", "alter", "describe", "describe_configs",
              "alter_configs", "idempotent_write")


@dataclass(frozen=True, order=True)
class Grant:
    """Permission for one operation on one resource (or every resource whose name starts with `name`)."""

    resource: str  # topic, group, cluster
    name: str
    operation: str
    pattern: str = "literal"

    def __post_init__(self) -> None:
        if self.resource not in RESOURCE_TYPES:
            raise ValueError(f"resource={self.resource!r} is not one of {RESOURCE_TYPES}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern={self.pattern!r} is not one of {PATTERNS}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation={self.operation!r} is not one of {OPERATIONS}")
        if not self.name:
            raise ValueError(f"an empty {self.resource} name matches nothing (grant {self.operation})")


@dataclass(frozen=True)
class Principal:
    """A party with its own SCRAM credential: what it is for, and everything it may do."""

    name: str
    purpose: str
    grants: tuple[Grant, ...]

    @property
    def user(self) -> str:
        """Kafka's principal string for this party (User:<name>)."""
        return f"User:{self.name}"


def _on(resource: str, names, operations, pattern: str = "literal") -> list[Grant]:
    return [Grant(resource, n, op, pattern) for n in names for op in operations]


def principal_table(settings: Settings) -> tuple[Principal, ...]:
    """The principals and their grants for the topic names, app id and groups of `settings`."""
    topics = [settings.topic(spec.name) for spec in topic_specs(settings)]
    topic = settings.topic
    return (
        Principal("pipeline", "the workers: every pipeline topic, their group, changelogs and Faust's topics", (
            *_on("topic", topics, ("read", "write", "describe", "create", "describe_configs")),
            *_on("topic", [settings.app_id], ("read", "write", "describe", "create", "describe_configs"), "prefixed"),
            *_on("group", [settings.app_id], ("read", "describe")),
            Grant("cluster", CLUSTER, "idempotent_write"),
        )),
        Principal("producer", "mobile backends: write geo-pings, connection-logs and consents, read nothing", (
            *_on("topic", [topic(t) for t in INPUTS], ("write", "describe")),
            Grant("cluster", CLUSTER, "idempotent_write"),
        )),
        Principal("crossings-reader", "the crossing-profile feature: read crossings only, with its own group", (
            *_on("topic", [topic("crossings")], ("read", "describe")),
            *_on("group", [topic("crossings-reader")], ("read", "describe")),
        )),
        Principal("partner", "partners and analysts: read the k-anonymized statistics only, with their own group", (
            *_on("topic", [topic(t) for t in STATISTICS], ("read", "describe")),
            *_on("group", [topic("partner")], ("read", "describe")),
        )),
        Principal(ADMIN, "operators: topics, configs, ACLs, credentials (a super user of the local broker)", (
            Grant("cluster", CLUSTER, "all"),
            Grant("topic", WILDCARD, "all"),
            Grant("group", WILDCARD, "all"),
        )),
    )


def acl_entries(table: tuple[Principal, ...]) -> set[tuple[str, Grant]]:
    """Every (principal, grant) of the table: the ACLs (ALLOW, any host) a cluster should hold for them."""
    return {(p.user, g) for p in table for g in p.grants}
