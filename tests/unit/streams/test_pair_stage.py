"""The pair stage's memory of who met whom: kept while `crossings` holds their records, no longer,
and never reused by a worker after its partition has moved elsewhere."""
from __future__ import annotations

import time

import pytest
from faust.types import TP

from geo.crossings import CellDetector, pair_key
from schemas.timefmt import format_ts
from streams.settings import Settings
from streams.topics import crossings_lifetime_s, topic_specs

H = 3600.0
AB, AC, BC = pair_key("a", "b"), pair_key("a", "c"), pair_key("b", "c")


@pytest.fixture
def stages(test_rules):
    """The stage modules, with their tables and partition states emptied before and after."""
    from streams import app, web
    from streams.plumbing.rebalance import ownership
    from streams.stages import detection, pairs

    def clear():
        for table in (app.pair_table, app.guard_table):
            table.data.clear()
        ownership.reassign([])

    clear()
    yield type("Stages", (), {"app": app, "pairs": pairs, "detection": detection, "web": web,
                              "ownership": ownership})
    clear()


def _rebalance(stages, *partitions):
    """The worker is assigned these partitions of crossing-pairs and crossing-cells."""
    tps = {TP(t.get_topic_name(), p) for t in (stages.app.crossing_pairs, stages.app.crossing_cells)
           for p in partitions}
    stages.ownership.reassign(tps)


def test_pair_memory_outlives_every_crossing_record_the_topic_can_still_hold():
    settings = Settings(crossings_retention_days=30)
    spec = {s.name: s for s in topic_specs(settings)}["crossings"].configs()
    longest_readable_ms = int(spec["retention.ms"]) + int(spec["segment.ms"])  # Kafka deletes whole segments
    assert crossings_lifetime_s(settings) * 1000 > longest_readable_ms
    assert crossings_lifetime_s(settings) <= 32 * 24 * H  # and is not kept for much longer


def test_pair_stage_forgets_pairs_once_their_records_are_gone(stages):
    now, pairs, table = time.time(), stages.pairs, stages.app.pair_table
    table.data.update({
        f"3|{AB}": [1000.0, now - 40 * 24 * H, "p", "<50m", 10.0],  # last reported 40 days ago
        f"3|{AC}": [2000.0, now - 2 * H, "p", "<50m", 10.0],
        f"1|{AB}": [1000.0, now - 40 * 24 * H, "p", "<50m", 10.0],  # a partition this worker no longer owns
    })
    _rebalance(stages, 1)
    pairs.pair_partitions.get(1)  # a copy left from when this worker owned partition 1
    _rebalance(stages, 3)
    cooldown = pairs.pair_partitions.get(3).cooldown
    assert cooldown.partners_of("a") == {"b", "c"} and cooldown.current("a", "c") == (2000.0, 10.0, "p", "<50m")
    tombstones = pairs.forget_pairs_reported_before(now - 31 * 24 * H)
    key = table.changelog_topic.prepare_key(f"3|{AB}", None)[0]
    assert tombstones == {3: [(key, None, 3)]}  # partition 1's owner forgets its entries, not this worker
    assert f"3|{AB}" not in table.data and f"1|{AB}" in table.data
    assert cooldown.partners_of("a") == {"c"} and cooldown.partners_of("b") == frozenset()
    assert pairs.forget_pairs_reported_before(now - 31 * 24 * H) == {}
    # The pair's next crossing is reported again, with a fresh memory.
    assert cooldown.offer_pair("a", "b", 1100.0, 10.0, "p", "<50m", now)


def test_a_partition_that_moved_away_is_rebuilt_from_the_table_when_it_comes_back(stages):
    pairs, detectors, table = stages.pairs.pair_partitions, stages.detection.detectors, stages.app.pair_table
    _rebalance(stages, 0, 2)
    table.data[f"2|{AB}"] = [10.0, 5 * H, "p", "<50m", 10.0]
    stale, kept = pairs.get(2), pairs.get(0)
    kept_detector, stale_detector = detectors.get(0), detectors.get(2)
    _rebalance(stages, 0)  # partition 2 moves to another worker: its memory here goes
    assert pairs.find(2) is None and detectors.find(2) is None and pairs.find(0) is kept
    # The other worker reports a c: its changelog reaches our table (a standby or a later recovery).
    table.data[f"2|{AC}"] = [20.0, 6 * H, "p", "<50m", 10.0]
    _rebalance(stages, 0, 2)  # and comes back
    assert pairs.find(0) is kept and detectors.find(0) is kept_detector  # owned all along
    assert detectors.find(2) is None
    fresh = pairs.get(2)
    assert fresh is not stale and fresh.cooldown.partners_of("a") == {"b", "c"}  # a withdrawal retracts both
    assert detectors.get(2) is not stale_detector and not detectors.get(2).ready  # rebuilt from its resume point


def test_withdrawal_guards_survive_a_move_and_expire_after_the_raw_retention(stages):
    """The guard that drops candidates computed before a withdrawal is rebuilt from its table when a
    partition comes back (or after a restart), and kept as long as such candidates can be recomputed."""
    now, pairs, table = time.time(), stages.pairs, stages.app.guard_table
    table.data.update({"1|tagA": [500.0, now - 60], "1|tagB": [700.0, now - 5 * 24 * H],
                       "2|tagC": [900.0, now - 5 * 24 * H]})
    _rebalance(stages, 1)
    assert pairs.pair_partitions.get(1).guards.snapshot() == {"tagA": [500.0, now - 60],
                                                              "tagB": [700.0, now - 5 * 24 * H]}
    pairs.pair_partitions.get(1).guards.withdraw("tagZ", 1.0, now)  # in memory only: must not outlive a move
    _rebalance(stages, 0)
    _rebalance(stages, 0, 1)
    guards = pairs.pair_partitions.get(1).guards
    assert set(guards.snapshot()) == {"tagA", "tagB"}
    assert pairs.GUARD_MEMORY_S >= stages.app.settings.raw_lifetime_hours * H
    tombstones = pairs.forget_guards_set_before(now - pairs.GUARD_MEMORY_S)
    assert tombstones == {1: [(b'"1|tagB"', None, 1)]}  # 2|tagC: not owned here, its owner forgets it
    assert set(guards.snapshot()) == {"tagA"} and set(table.data) == {"1|tagA", "2|tagC"}


def test_state_page_points_at_the_input_partition_holding_a_watermark_back(stages):
    _rebalance(stages, 1)
    crossing = stages.detection.rules().crossing
    state = stages.detection.detectors.get(1)
    det = state.detector = CellDetector(crossing, sources=range(3))
    det.add_many(["zz-user-9"], [7200.0], [48.85], [2.35], [None], ["k"], ["k"], sources=[0])
    det.advance(2, 7300.0)
    stages.pairs.pair_partitions.get(1).cooldown.offer_pair("aa-user-1", "bb-user-2", 10.0, 10.0, "p", "<50m", 5 * H)
    summary = stages.web.state_summary()
    cells = summary["crossing-cells"]["1"]
    assert cells["watermark"] is None and cells["slowest_input"] == 1  # input partition 1: nothing yet
    assert cells["live_pings"] == 1
    det.advance(1, 7250.0)
    cells = stages.web.state_summary()["crossing-cells"]["1"]
    assert cells["slowest_input"] == 0 and cells["watermark"] == format_ts(7200.0 - crossing.lateness_s)
    assert summary["crossing-pairs"]["1"] == {"pairs": 1, "users_with_partners": 2, "withdrawal_guards": 0}
    assert not any(u in repr(summary) for u in ("zz-user-9", "aa-user-1", "bb-user-2"))  # no user data


def test_a_pairs_groups_come_back_from_the_table_so_a_withdrawal_after_a_move_falls_back(stages):
    """The crowd rule's groups are part of a pair's table value: a partition rebuilt from the table can
    still withdraw one and show the pair's next best crossing."""
    pairs, table = stages.pairs.pair_partitions, stages.app.pair_table
    groups = [["k", 0, 0, 0.0, 100.0, 10.0, "p1", "<50m", 0], ["j", 1, 1, 0.0, 400.0, 5.0, "p2", "<50m", 1]]
    table.data[f"2|{AB}"] = [100.0, 5 * H, "p1", "<50m", 10.0, groups]
    _rebalance(stages, 2)
    cooldown = pairs.get(2).cooldown
    assert cooldown.current("a", "b") == (100.0, 10.0, "p1", "<50m")
    out = cooldown.withdraw_unit("a", "b", "k", 0)
    assert out.changed and out.record == (400.0, 5.0, "p2", "<50m")
    assert stages.pairs._shown(out.record) == (400.0, "p2", "<50m")
    assert stages.pairs._shown((400.0, 1.0, "p2", "<50m")) == stages.pairs._shown(out.record)  # d is not shown
