"""/metrics: Prometheus text from counts kept elsewhere (tallies, counters table, stage stats, lag)."""
from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import consumer_lag, render, worker_metrics
from streams.plumbing.tallies import RECENT_WINDOWS, Tallies


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_windows_are_counted_once_per_topic_and_window_start():
    t = Tallies(frozenset({"partner-statistics"}))
    for region in (b"a", b"b", b"c"):
        t.count_sent("partner-statistics", 1, b"2026-12-02T05:00:00.000Z|" + region)
    t.count_sent("partner-statistics", 1, b"2026-12-02T06:00:00.000Z|a")
    t.count_sent("crossings", 10, b"2026-12-02T05:00:00.000Z|x")  # not a statistics topic: no window
    assert t.windows == {"partner-statistics": 2} and t.sent == {"partner-statistics": 4, "crossings": 10}


def test_the_window_memory_is_bounded():
    t = Tallies(frozenset({"s"}))
    for i in range(RECENT_WINDOWS + 10):
        t.count_sent("s", 1, f"{i}|r".encode())
    assert t.windows["s"] == RECENT_WINDOWS + 10 and len(t._seen) == RECENT_WINDOWS


def test_consumer_lag_is_end_minus_committed():
    from faust.types import TP

    a, b, c = TP("x", 0), TP("x", 1), TP("y", 0)
    assert consumer_lag({a: 10, b: 5, c: None}, {a: 4, b: None}) == {("x", 0): 6, ("x", 1): 5}


def test_the_page_has_every_family_with_the_app_id():
    t = Tallies(frozenset({"run.partner-statistics"}))
    t.count_sent("run.crossings", 6)
    t.count_sent("run.erasure-receipts", 1)
    t.count_rejected("run.geo-pings", "not_json")
    t.count_rejected("run.geo-pings", "not_json")
    ingest = {"run.geo-pings/3": {"received": 9, "accepted": 5, "rejected": 2, "dropped_consent": 2, "late": 1}}
    stages = {"run.crossing-cells": SimpleNamespace(busy_s=1.25, records=40, calls=3)}
    text = render(worker_metrics(ingest, t, stages, {("run.geo-pings", 3): 7}, "cp", "run.crossings",
                                 "run.erasure-receipts")).decode()
    got = _samples(text)
    app = ("app", "cp")
    assert got[("crosspaths_ingest_messages_total", (app, ("outcome", "received"), ("partition", "3"),
                                                     ("topic", "run.geo-pings")))] == 9
    assert not any(dict(labels).get("outcome") == "late" for _, labels in got)  # ingest outcomes only
    assert got[("crosspaths_rejected_total", (app, ("reason", "not_json"), ("topic", "run.geo-pings")))] == 2
    assert got[("crosspaths_crossing_records_emitted_total", (app,))] == 6
    assert got[("crosspaths_erasures_completed_total", (app,))] == 1
    assert got[("crosspaths_windows_published_total", (app, ("topic", "run.partner-statistics")))] == 0
    assert got[("crosspaths_stage_seconds_total", (app, ("stage", "run.crossing-cells")))] == 1.25
    assert got[("crosspaths_consumer_lag", (app, ("partition", "3"), ("topic", "run.geo-pings")))] == 7
    assert all(("app", "cp") in labels for _, labels in got)
