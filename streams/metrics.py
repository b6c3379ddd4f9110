"""The worker's /metrics page in Prometheus text format, from counts kept elsewhere (none counted here).

- ingest outcomes per input partition this worker owns: the counters table (streams/plumbing/counters.py)
- dead letters by reason, records sent per topic, statistics windows published: streams/plumbing/tallies.py
- time, records and calls per stage (batch topic): streams/plumbing/bulk.py (the /batches/ page)
- consumer lag per topic and partition: the worker's consumer (end offset minus committed offset)
`worker_metrics` turns these plain values into metric families; the page gathers and renders them.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streams.plumbing.tallies import Tallies

INGEST_OUTCOMES = ("received", "accepted", "rejected", "dropped_consent")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def worker_metrics(ingest: Mapping[str, dict], tallies: Tallies, stages: Mapping[str, object],
                   lag: Mapping[tuple[str, int], int], app_id: str, crossings_topic: str,
                   receipts_topic: str) -> list[Metric]:
    """Metric families of one worker from its counts: ingest (`topic/partition` -> counts), tallies,
    stage stats (topic -> busy_s, records, calls) and lag ((topic, partition) -> messages).

    Every sample carries the app id (workers of several deployments may share one Prometheus).
    """
    def family(kind, name: str, documentation: str, *labels: str):
        made = kind(name, documentation, labels=["app", *labels])
        families.append(made)
        return lambda values, n: made.add_metric([app_id, *values], n)

    families: list[Metric] = []
    ingested = family(CounterMetricFamily, "crosspaths_ingest_messages", "Input messages by outcome, per input "
                      "partition this worker owns (received = accepted + rejected + dropped_consent)",
                      "topic", "partition", "outcome")
    for key, counts in sorted(ingest.items()):
        topic, _, partition = key.rpartition("/")
        for outcome in INGEST_OUTCOMES:
            if outcome in counts:
                ingested([topic, partition, outcome], counts[outcome])
    rejected = family(CounterMetricFamily, "crosspaths_rejected", "Dead letters sent by this worker, by source "
                      "topic and reason code", "topic", "reason")
    for (topic, reason), n in sorted(tallies.rejected.items()):
        rejected([topic, reason], n)
    sent = family(CounterMetricFamily, "crosspaths_records_sent", "Records this worker handed to the producer, "
                  "per topic", "topic")
    for topic, n in sorted(tallies.sent.items()):
        sent([topic], n)
    family(CounterMetricFamily, "crosspaths_crossing_records_emitted", "Records sent to crossings (one per "
           "participant and other party: crossings and tombstones)")([], tallies.sent.get(crossings_topic, 0))
    family(CounterMetricFamily, "crosspaths_erasures_completed", "Erasure receipts sent (one per completed "
           "erasure)")([], tallies.sent.get(receipts_topic, 0))
    windows = family(CounterMetricFamily, "crosspaths_windows_published", "Statistics windows with records "
                     "published, per topic", "topic")
    for topic in sorted(tallies.window_topics):
        windows([topic], tallies.windows.get(topic, 0))
    busy = family(CounterMetricFamily, "crosspaths_stage_seconds", "Wall-clock seconds in each stage's handler "
                  "(by batch topic; also waiting for records and garbage-collector pauses)", "stage")
    handled = family(CounterMetricFamily, "crosspaths_stage_records", "Records handled by each stage", "stage")
    for stage, stats in sorted(stages.items()):
        busy([stage], stats.busy_s)
        handled([stage], stats.records)
    behind = family(GaugeMetricFamily, "crosspaths_consumer_lag", "Messages after the committed offset, per topic "
                    "and partition this worker consumes", "topic", "partition")
    for (topic, partition), n in sorted(lag.items()):
        behind([topic, str(partition)], n)
    return families


def render(families: Iterable[Metric]) -> bytes:
    """Prometheus text exposition of these families."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    fixed = list(families)

    class _Fixed:
        def collect(self):
            return fixed

    registry.register(_Fixed())
    return generate_latest(registry)


def consumer_lag(highwaters: Mapping, committed: Mapping) -> dict[tuple[str, int], int]:
    """Per (topic, partition): end offset minus committed offset (the whole partition if none committed)."""
    out = {}
    for tp, end in highwaters.items():
        if end is None:
            continue
        done = committed.get(tp)
        out[(tp.topic, tp.partition)] = max(0, end - (done if done is not None and done >= 0 else 0))
    return out
