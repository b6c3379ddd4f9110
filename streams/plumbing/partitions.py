"""Per-partition state of a stage: one explicit object per partition this worker owns.

A stage declares `PartitionStates(topic, make)`; `get(p)` gives partition p's object, made by
`make(p)` on first use (from its table, or empty). A rebalance that takes a partition away, or
gives a new one, drops that partition's object: a partition that comes back must not use state
another worker has moved on from, so it is rebuilt (from its table or its log) when next used.
Partitions kept through the rebalance (Kafka revokes everything first, then assigns) keep theirs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class PartitionStates(Generic[T]):
    """The state objects of one stage topic's partitions on this worker."""

    def __init__(self, topic_name: str, make: Callable[[int], T]) -> None:
        self.topic_name = topic_name
        self._make = make
        self._states: dict[int, T] = {}
        self.owned: frozenset[int] = frozenset()  # this topic's partitions assigned to the worker

    def get(self, p: int) -> T:
        """Partition p's state, made on first use."""
        state = self._states.get(p)
        if state is None:
            state = self._states[p] = self._make(p)
        return state

    def find(self, p: int) -> T | None:
        """Partition p's state if it exists (no state is made)."""
        return self._states.get(p)

    def items(self) -> Iterator[tuple[int, T]]:
        """(partition, state) in partition order."""
        return iter(sorted(self._states.items()))

    def values(self) -> list[T]:
        return list(self._states.values())

    def reassign(self, partitions: Iterable[int]) -> list[int]:
        """The worker now owns `partitions` of this topic: drop the state of those that moved; returns them."""
        now = frozenset(partitions)
        moved = sorted(now ^ self.owned)
        for p in moved:
            self._states.pop(p, None)
        self.owned = now
        return moved


class Ownership:
    """Every stage's PartitionStates, reassigned together when Kafka rebalances the worker."""

    def __init__(self) -> None:
        self._stages: list[PartitionStates] = []

    def register(self, states: PartitionStates[T]) -> PartitionStates[T]:
        self._stages.append(states)
        return states

    def reassign(self, assigned: Iterable) -> None:
        """Apply a new assignment (topic-partitions with .topic and .partition) to every stage."""
        assigned = list(assigned)
        for states in self._stages:
            states.reassign(tp.partition for tp in assigned if tp.topic == states.topic_name)
