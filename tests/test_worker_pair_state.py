"""The pair stage's memory of who met whom: kept while `crossings` holds their records, no longer,
and never reused by a worker after its partition has moved elsewhere."""
from __future__ import annotations

import asyncio
import time

import pytest
from faust.types import TP

from geo.crossings import pair_key
from streams.settings import Settings
from streams.topics import crossings_lifetime_s, topic_specs

H = 3600.0
AB, AC, BC = pair_key("a", "b"), pair_key("a", "c"), pair_key("b", "c")


@pytest.fixture
def worker():
    from streams import app as worker

    saved = dict(worker.pair_table.data), dict(worker.cooldowns), dict(worker.detectors), set(worker._owned)
    worker.pair_table.data.clear(), worker.cooldowns.clear(), worker.detectors.clear()
    worker._owned = set()
    yield worker
    worker.pair_table.data.clear(), worker.cooldowns.clear(), worker.detectors.clear()
    worker.pair_table.data.update(saved[0]), worker.cooldowns.update(saved[1]), worker.detectors.update(saved[2])
    worker._owned = saved[3]


def _rebalance(worker, *partitions):
    """The worker is assigned these partitions of crossing-pairs and crossing-cells."""
    tps = {TP(t.get_topic_name(), p) for t in (worker.crossing_pairs, worker.crossing_cells) for p in partitions}
    asyncio.run(worker.forget_moved_crossing_state(worker.app, tps))


def test_pair_memory_outlives_every_crossing_record_the_topic_can_still_hold():
    settings = Settings(crossings_retention_days=30)
    spec = {s.name: s for s in topic_specs(settings)}["crossings"].configs()
    longest_readable_ms = int(spec["retention.ms"]) + int(spec["segment.ms"])  # Kafka deletes whole segments
    assert crossings_lifetime_s(settings) * 1000 > longest_readable_ms
    assert crossings_lifetime_s(settings) <= 32 * 24 * H  # and is not kept for much longer


def test_pair_stage_forgets_pairs_once_their_records_are_gone(worker):
    now = time.time()
    worker.pair_table.data.update({
        f"3|{AB}": [1000.0, now - 40 * 24 * H],  # last reported 40 days ago
        f"3|{AC}": [2000.0, now - 2 * H],
        f"3|{BC}": 1500.0,  # written before reported_at was kept: counts as reported at restore
        f"1|{AB}": [1000.0, now - 40 * 24 * H],  # a partition this worker no longer owns
    })
    _rebalance(worker, 1)
    worker._cooldown_of(1)  # a copy left from when this worker owned partition 1
    _rebalance(worker, 3)
    cooldown = worker._cooldown_of(3)
    assert cooldown.partners_of("a") == {"b", "c"}
    tombstones = worker._forget_pairs_reported_before(now - 31 * 24 * H)
    key = worker.pair_table.changelog_topic.prepare_key(f"3|{AB}", None)[0]
    assert tombstones == {3: [(key, None, 3)]}  # partition 1's owner forgets its entries, not this worker
    assert f"3|{AB}" not in worker.pair_table.data and f"1|{AB}" in worker.pair_table.data
    assert cooldown.partners_of("a") == {"c"} and cooldown.partners_of("b") == {"c"}
    assert worker._forget_pairs_reported_before(now - 31 * 24 * H) == {}
    # The pair's next crossing is reported again, with a fresh memory.
    assert cooldown.offer_pair("a", "b", 1100.0, now)


def test_a_partition_that_moved_away_is_rebuilt_from_the_table_when_it_comes_back(worker):
    _rebalance(worker, 0, 2)
    worker.pair_table.data[f"2|{AB}"] = [10.0, 5 * H]
    stale = worker._cooldown_of(2)
    kept = worker._cooldown_of(0)
    worker.detectors[0], worker.detectors[2] = "kept", "stale"
    _rebalance(worker, 0)  # partition 2 moves to another worker: its memory here goes
    assert 2 not in worker.cooldowns and 2 not in worker.detectors and worker.cooldowns.get(0) is kept
    worker.cooldowns[2], worker.detectors[2] = stale, "stale"  # (as if it had stayed)
    # The other worker reports a c: its changelog reaches our table (a standby or a later recovery).
    worker.pair_table.data[f"2|{AC}"] = [20.0, 6 * H]
    _rebalance(worker, 0, 2)  # and comes back
    assert worker.cooldowns.get(0) is kept and worker.detectors.get(0) == "kept"  # owned all along
    assert 2 not in worker.detectors
    fresh = worker._cooldown_of(2)
    assert fresh is not stale and fresh.partners_of("a") == {"b", "c"}  # a withdrawal retracts both


def test_withdrawal_guards_survive_a_move_and_expire_after_the_raw_retention(worker):
    """The guard that drops candidates computed before a withdrawal is rebuilt from its table when a
    partition comes back (or after a restart), and kept as long as such candidates can be recomputed."""
    now = time.time()
    worker.guard_table.data.update({"1|tagA": [500.0, now - 60], "1|tagB": [700.0, now - 5 * 24 * H],
                                    "2|tagC": [900.0, now - 5 * 24 * H]})
    try:
        assert worker._guards_of(1) == {"tagA": 500.0, "tagB": 700.0}
        worker.revoked[1]["tagZ"] = 1.0  # set in memory only: must not outlive the partition's move
        _rebalance(worker, 0)
        _rebalance(worker, 0, 1)
        assert worker._guards_of(1) == {"tagA": 500.0, "tagB": 700.0}
        assert worker.GUARD_MEMORY_S >= worker.settings.raw_retention_hours * H
        tombstones = worker._forget_guards_set_before(now - worker.GUARD_MEMORY_S)
        assert tombstones == {1: [(b'"1|tagB"', None, 1)]}  # 2|tagC: not owned here, its owner forgets it
        assert worker._guards_of(1) == {"tagA": 500.0} and set(worker.guard_table.data) == {"1|tagA", "2|tagC"}
    finally:
        worker.guard_table.data.clear(), worker.revoked.clear()


def test_state_page_points_at_the_input_partition_holding_a_watermark_back(worker):
    from geo.crossings import CellDetector

    _rebalance(worker, 1)
    det = worker.detectors[1] = CellDetector(worker.CROSSING, sources=range(3))
    det.add_many(["zz-user-9"], [7200.0], [48.85], [2.35], [None], ["k"], ["k"], sources=[0])
    det.advance(2, 7300.0)
    worker._cooldown_of(1).offer_pair("aa-user-1", "bb-user-2", 10.0, 5 * H)
    state = worker.state_summary()
    cells = state["crossing-cells"]["1"]
    assert cells["watermark"] is None and cells["slowest_input"] == 1  # input partition 1: nothing yet
    assert cells["live_pings"] == 1
    det.advance(1, 7250.0)
    cells = worker.state_summary()["crossing-cells"]["1"]
    assert cells["slowest_input"] == 0 and cells["watermark"] == worker.format_ts(7200.0 - worker.CROSSING.lateness_s)
    assert state["crossing-pairs"]["1"] == {"pairs": 1, "users_with_partners": 2, "withdrawal_guards": 0}
    assert not any(u in repr(state) for u in ("zz-user-9", "aa-user-1", "bb-user-2"))  # no user data
