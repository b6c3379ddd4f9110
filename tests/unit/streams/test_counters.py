"""Ingest counters (streams/plumbing/counters.py): each input offset counted once across crashes, moves and rebalances.

No broker: a fake table stands for the counters table and its changelog (what was sent, what reached
the broker), and a small model of Faust's consumer (acks, commits, restarts) drives the counters the
way the worker's wiring does.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.plumbing.counters import NEXT, IngestCounters

TOPIC = "geo-pings"


class FakeTable:
    """A table whose changelog writes are sent, then delivered to the broker by a producer flush."""

    def __init__(self, delivered: dict | None = None) -> None:
        self.delivered: dict[str, dict] = dict(delivered or {})  # the changelog as the broker has it (latest per key)
        self.data: dict[str, dict] = dict(self.delivered)  # this worker's copy, restored from the changelog
        self.sent: list[tuple[str, dict]] = []  # handed to the producer, not on the broker yet

    def get(self, key: str):
        return self.data.get(key)

    def send_changelog(self, partition: int, key: str, value) -> tuple:
        self.sent.append((key, value))
        return partition, key  # stands for Faust's FutureMessage (awaited: delivered)

    def flush_producer(self) -> None:
        for key, value in self.sent:
            self.delivered[key] = value
        self.sent.clear()


def outcome_of(offset: int) -> str:
    return ("accepted", "accepted", "rejected", "dropped_consent")[offset % 4]


def exact(n: int) -> dict:
    counts = {"received": n, "accepted": 0, "rejected": 0, "dropped_consent": 0, NEXT: n}
    for offset in range(n):
        counts[outcome_of(offset)] += 1
    return counts


def test_each_offset_is_counted_once_however_often_it_is_delivered():
    counters = IngestCounters(FakeTable())
    assert [counters.count(TOPIC, 0, o, outcome_of(o)) for o in range(6)] == [True] * 6
    assert [counters.count(TOPIC, 0, o, outcome_of(o)) for o in range(3, 10)] == [False] * 3 + [True] * 4
    counters.flush()
    assert counters.table.data[f"{TOPIC}/0"] == exact(10)
    assert counters.seen(TOPIC, 0, 9) and not counters.seen(TOPIC, 0, 10)
    assert counters.count(TOPIC, 1, 0, "accepted")  # partitions apart
    counters.flush()
    assert counters.table.data[f"{TOPIC}/1"]["received"] == 1


def test_a_new_owner_skips_what_the_previous_one_counted():
    table = FakeTable()
    first = IngestCounters(table)
    for o in range(8):
        first.count(TOPIC, 2, o, outcome_of(o))
    first.flush()
    table.flush_producer()
    second = IngestCounters(FakeTable(table.delivered))  # restored from the changelog
    for o in range(5, 12):  # delivered again from the committed offset 5
        second.count(TOPIC, 2, o, outcome_of(o))
    second.flush()
    assert second.table.data[f"{TOPIC}/2"] == exact(12)


def test_counts_written_before_offsets_held_next_default_to_zero():
    table = FakeTable({f"{TOPIC}/0": {"received": 3, "accepted": 3, "rejected": 0, "dropped_consent": 0}})
    counters = IngestCounters(table)
    assert counters.count(TOPIC, 0, 0, "accepted")
    counters.flush()
    assert table.data[f"{TOPIC}/0"]["received"] == 4 and table.data[f"{TOPIC}/0"][NEXT] == 1


def test_nothing_is_counted_between_a_revocation_and_the_next_assignment_nor_where_not_assigned():
    """A handler may outlive a rebalance: it counts only partitions its worker still holds."""
    generation, assigned = [1], {(TOPIC, 0), (TOPIC, 1)}
    counters = IngestCounters(FakeTable(), consumer_generation=lambda: generation[0],
                              assigned=lambda topic, partition: (topic, partition) in assigned)
    assert counters.count(TOPIC, 0, 0, "accepted") and counters.count(TOPIC, 1, 0, "accepted")
    assert not counters.count(TOPIC, 2, 0, "accepted")  # not this worker's
    counters.revoke()  # flushed and forgotten
    assert counters.table.data[f"{TOPIC}/0"]["received"] == 1
    assert not counters.count(TOPIC, 0, 1, "accepted") and not counters.seen(TOPIC, 0, 0)
    generation[0], assigned = 2, {(TOPIC, 0)}  # partition 1 moved to another worker
    assert not counters.count(TOPIC, 1, 1, "accepted")  # e.g. a handler still on a batch fetched before
    assert [counters.count(TOPIC, 0, o, "accepted") for o in (0, 1)] == [False, True]
    counters.flush()
    assert counters.table.data[f"{TOPIC}/0"]["received"] == 2 and counters.table.data[f"{TOPIC}/1"]["received"] == 1
    assert counters.stale == 4


def test_the_sends_to_wait_for_before_a_commit_include_the_timers():
    counters = IngestCounters(FakeTable())
    counters.count(TOPIC, 3, 0, "accepted")
    counters.flush()  # the timer's write, maybe still on its way when the commit comes
    counters.count(TOPIC, 1, 0, "accepted")
    assert sorted(counters.sends()) == [(1, f"{TOPIC}/1"), (3, f"{TOPIC}/3")]
    assert counters.sends() == []  # nothing written since
    counters.count(TOPIC, 3, 1, "accepted")
    assert counters.revoke() == [(3, f"{TOPIC}/3")]


def test_count_rest_counts_only_input_topics_and_only_what_was_not_counted():
    counters = IngestCounters(FakeTable(), topics=[TOPIC])
    counters.count(TOPIC, 0, 0, "accepted")
    assert counters.count_rest(TOPIC, 0, [0, 1, 2], "rejected") == 2
    assert counters.count_rest("crossing-cells", 0, [0, 1], "rejected") == 0
    counters.flush()
    assert counters.table.data == {f"{TOPIC}/0": {"received": 3, "accepted": 1, "rejected": 2, "dropped_consent": 0,
                                                  NEXT: 3}}


# --------------------------------------------------------------------------- the protocol, under faults


class Partition:
    """One input partition of n messages read by a worker that may crash at any point, as Faust runs it.

    A batch is handled (each message counted), then acked; a commit runs the before-commit hook (the
    counters written), flushes the producer, then commits the acked offset; the 0.5 s timer writes
    counts at any time; the producer delivers what was sent at any time. A kill -9 loses what is in
    memory and what was not delivered; the next worker restores the delivered changelog and resumes
    at the committed offset. A rebalance revokes (counts written, producer flushed), then a worker
    (this one or another) resumes at the committed offset.
    """

    def __init__(self, n: int, hook: bool = True) -> None:
        self.n, self.hook = n, hook
        self.table = FakeTable()
        self.counters = IngestCounters(self.table)
        self.committed = self.position = self.acked = 0

    def handle(self, size: int) -> None:
        for offset in range(self.position, min(self.n, self.position + size)):
            self.counters.count(TOPIC, 0, offset, outcome_of(offset))
            self.position = offset + 1
        self.acked = self.position

    def commit(self) -> None:
        if self.hook:
            self.counters.flush()
        self.table.flush_producer()
        self.committed = self.acked

    def kill(self) -> None:
        self.table = FakeTable(self.table.delivered)
        self.counters = IngestCounters(self.table)
        self.position = self.acked = self.committed

    def rebalance(self) -> None:
        self.counters.revoke()
        self.table.flush_producer()
        self.kill()  # the next owner: nothing in memory but what the changelog has

    def step(self, action: str, size: int) -> None:
        {"handle": lambda: self.handle(size), "commit": self.commit, "timer": self.counters.flush,
         "deliver": self.table.flush_producer, "kill": self.kill, "rebalance": self.rebalance}[action]()

    def finish(self) -> dict:
        while self.position < self.n:
            self.handle(7)
        self.commit()
        self.counters.flush()  # the timer's next write, delivered
        self.table.flush_producer()
        return self.table.delivered[f"{TOPIC}/0"]


ACTIONS = ("handle", "handle", "handle", "commit", "timer", "deliver", "kill", "rebalance")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 60), st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(1, 9)), max_size=40))
def test_counts_are_exact_whatever_the_crashes_and_rebalances(n, steps):
    partition = Partition(n)
    for action, size in steps:
        partition.step(action, size)
    assert partition.finish() == exact(n)


def test_without_counts_written_before_the_commit_a_kill_loses_counts():
    """The model finds the window the before-commit hook closes (so the property above has teeth)."""
    partition = Partition(40, hook=False)
    partition.handle(10)
    partition.commit()  # offset 10 committed, the counts of 0..9 still only in memory
    partition.kill()
    assert partition.finish()["received"] == 30
