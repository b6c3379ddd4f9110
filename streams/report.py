"""Read results back from Kafka and summarize them for people: counters, dead letters."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from streams.kafkaio import latest_by_key, read_json
from streams.settings import Settings

INPUTS = ("geo-pings", "connection-logs", "consents")
FIELDS = ("received", "accepted", "rejected", "dropped_consent")


@dataclass
class TopicCounters:
    """Ingest counters of one input topic, summed over its partitions."""

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    dropped_consent: int = 0

    @property
    def reconciles(self) -> bool:
        """received = accepted + rejected + dropped by consent."""
        return self.received == self.accepted + self.rejected + self.dropped_consent


@dataclass
class Counters:
    """Ingest counters per input topic."""

    topics: dict[str, TopicCounters] = field(default_factory=dict)

    def total_received(self) -> int:
        return sum(c.received for c in self.topics.values())


def read_counters(settings: Settings) -> Counters:
    """Ingest counters of every worker, from the counters table's changelog."""
    latest = latest_by_key(settings.bootstrap_servers, f"{settings.app_id}-counters-changelog")
    out = Counters({name: TopicCounters() for name in INPUTS})
    prefix = settings.topic("")
    for key, value in latest.items():
        if value is None:
            continue
        topic = json.loads(key).rsplit("/", 1)[0]
        name = topic[len(prefix):] if topic.startswith(prefix) else topic
        if name not in out.topics:
            continue
        counts = json.loads(value)
        for f in FIELDS:
            setattr(out.topics[name], f, getattr(out.topics[name], f) + int(counts.get(f, 0)))
    return out


def format_counters(counters: Counters) -> str:
    """A small table of the counters, with the reconciliation check."""
    lines = [f"{'topic':<18}{'received':>10}{'accepted':>10}{'rejected':>10}{'dropped':>10}  reconciles"]
    for name, c in counters.topics.items():
        lines.append(f"{name:<18}{c.received:>10}{c.accepted:>10}{c.rejected:>10}{c.dropped_consent:>10}  "
                     f"{'yes' if c.reconciles else 'NO'}")
    return "\n".join(lines)


def dead_letter_reasons(settings: Settings) -> Counter:
    """How many dead letters per (source topic, reason)."""
    prefix = settings.topic("")
    reasons: Counter = Counter()
    for letter in read_json(settings.bootstrap_servers, settings.topic("dead-letters")):
        reasons[(letter["source_topic"].removeprefix(prefix), letter["reason"])] += 1
    return reasons
