"""Every topic that can hold personal data has a declared lifetime, and the receipts' dates come from it."""
from __future__ import annotations

import pytest

from streams.settings import Settings
from streams.topics import (DAY_MS, HOUR_MS, TABLES, TopicSpec, changelog_specs,
                            crossings_lifetime_s, erasure_horizons, topic_specs)

S = Settings()
CHECK = S.broker_retention_check_ms


def test_raw_and_internal_topics_are_gone_within_the_raw_lifetime():
    specs = {spec.name: spec for spec in topic_specs(S)}
    for name in ("geo-pings", "connection-logs", "crossing-cells", "crossing-pairs", "stats-cells",
                 "stats-connections", "erasure-reports", "dead-letters"):
        assert specs[name].lifetime_ms(CHECK) <= S.raw_lifetime_hours * HOUR_MS == 24 * HOUR_MS, name


@pytest.mark.parametrize("spec", [s for s in topic_specs(Settings()) if s.personal], ids=lambda s: s.name)
def test_every_personal_topic_declares_its_segments_and_runs_on_the_brokers_clock(spec):
    cfg = spec.configs()
    assert "segment.ms" in cfg  # the broker's 7-day default would let records outlive retention by a week
    assert cfg["message.timestamp.type"] == "LogAppendTime"  # a producer's clock cannot stretch a lifetime
    if spec.compacted:
        assert cfg["max.compaction.lag.ms"] == str(int(S.compaction_lag_s * 1000))
        assert int(cfg["segment.ms"]) <= int(cfg["max.compaction.lag.ms"])  # compaction skips the active segment
        assert cfg["cleanup.policy"] == ("compact,delete" if spec.retention_ms >= 0 else "compact")
    else:
        assert spec.lifetime_ms(CHECK) == int(cfg["retention.ms"]) + int(cfg["segment.ms"]) + CHECK


@pytest.mark.parametrize("hours", [1, 6, 24, 72])
def test_a_lifetime_bound_is_met_exactly(hours):
    spec = TopicSpec.within("t", "k", hours * HOUR_MS, CHECK)
    assert spec.lifetime_ms(CHECK) == hours * HOUR_MS and spec.retention_ms > 0


def test_a_lifetime_too_short_for_its_segments_is_refused():
    with pytest.raises(ValueError, match="lifetime_ms=300000 of t is too short"):
        TopicSpec.within("t", "k", 5 * 60 * 1000, CHECK)  # the retention check alone takes 5 minutes
    assert TopicSpec.within("t", "k", 60_000, 5000).lifetime_ms(5000) == 60_000  # short lifetimes (tests) work


def test_the_declared_tables_are_the_workers_tables():
    from streams.app import app

    assert set(TABLES) == {table.name for table in app.tables.values()}
    assert all(spec.compacted and spec.personal for spec in changelog_specs(S))


def test_erasure_horizons_cover_every_place_a_user_can_be_and_the_slowest_sets_the_date():
    horizons = erasure_horizons(S)
    personal = {S.topic(s.name) for s in topic_specs(S) if s.personal}
    assert set(horizons) == personal | {s.name for s in changelog_specs(S)}
    for name in ("geo-pings", "dead-letters", "inactivity-notices"):
        assert horizons[S.topic(name)] == 24 * HOUR_MS, name
    compaction = 2 * (6 * HOUR_MS + 6 * HOUR_MS + HOUR_MS // 2) + DAY_MS + CHECK  # two passes, and the tombstone
    for name in ("crossings", "consents"):  # an erasure tombstones the user's keys there
        assert horizons[S.topic(name)] == compaction, name
    assert max(horizons.values()) == compaction < 2 * DAY_MS + 2 * HOUR_MS  # was 91 days (inactivity notices)
    assert S.topic("partner-statistics") not in horizons  # k-anonymous counts, no personal data
    assert S.topic("erasure-receipts") not in horizons  # the proof, naming the user by a hash only


def test_short_lifetimes_for_tests_shorten_every_horizon():
    quick = Settings(raw_lifetime_hours=0.02, compaction_lag_s=20, tombstone_retention_s=10, cleaner_slack_s=0,
                     broker_retention_check_ms=5000)
    assert max(erasure_horizons(quick).values()) <= 100_000


def test_the_pair_stage_remembers_pairs_as_long_as_crossings_can_hold_them():
    lifetime = {s.name: s for s in topic_specs(S)}["crossings"].lifetime_ms(CHECK)
    assert lifetime / 1000 < crossings_lifetime_s(S) <= lifetime / 1000 + 3600
