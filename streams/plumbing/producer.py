"""The worker's producer: acks=all and idempotent, whatever Faust would choose; it tallies what it sends.

Faust's aiokafka producer turns idempotence on only inside transactions. Outside them a retried
batch (a broker that failed over, a lost acknowledgement) could be written twice; with
idempotence the broker drops the duplicate, and with acks=all a send is acknowledged once it is on
min.insync.replicas replicas, so losing one broker of a replicated cluster loses nothing sent.
"""
from __future__ import annotations

from typing import Any, Mapping

import faust
from faust.transport.drivers.aiokafka import Producer

from streams.plumbing.tallies import tallies


class IdempotentProducer(Producer):
    """Faust's aiokafka producer with acks=all and enable_idempotence always on."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any, *, transactional_id: str | None = None):
        """Send one message (Faust's), counted per topic for /metrics."""
        tallies(self.app).count_sent(topic, 1, key)
        return await super().send(topic, key, value, partition, timestamp, headers, transactional_id=transactional_id)


def install(app: faust.App) -> None:
    """Make `app` create its producers as IdempotentProducer (before the worker starts)."""
    app.transport.Producer = IdempotentProducer
