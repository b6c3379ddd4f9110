"""The worker's partition ownership: every stage's per-partition state follows Kafka's assignment."""
from __future__ import annotations

from streams.app import app
from streams.plumbing.partitions import Ownership

ownership = Ownership()


@app.on_partitions_assigned.connect
async def reassign_partition_state(app, assigned, **kwargs) -> None:
    """Drop the state of partitions this rebalance took away or newly gave (see plumbing.partitions)."""
    ownership.reassign(assigned)
