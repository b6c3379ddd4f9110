"""Producer errors never stop a stage: transient ones are retried, the rest quarantine their input."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import types

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from faust.types import TP

from schemas.outputs import DeadLetter
from streams.app import app, crossing_cells
from streams.plumbing import outbox
from streams.plumbing.bulk import BatchConsumer
from streams.plumbing.outbox import Outbox, Undeliverable


class FakeProducer:
    """Faust's producer as far as `send` uses it: each call takes the next outcome of `script`."""

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    async def send(self, topic, key, value, partition, timestamp, headers):
        outcome = self.script.pop(0) if self.script else "ok"
        if isinstance(outcome, BaseException):
            raise ProducerSendError(f"Error while sending: {outcome!r}") from outcome
        self.sent.append((topic, key, value, partition))
        future = asyncio.get_running_loop().create_future()
        if outcome == "refused later":
            future.set_exception(MessageSizeTooLargeError("the topic's max.message.bytes"))
        else:
            future.set_result(None)
        return future


@pytest.fixture
def failures(monkeypatch):
    """The input positions quarantined through outbox.deliveries, and a short retry budget."""
    quarantined: list[tuple[list, str]] = []

    async def on_failure(positions, why):
        quarantined.append((positions, why))

    monkeypatch.setattr(outbox.deliveries, "on_failure", on_failure)
    monkeypatch.setattr(outbox, "settings", outbox.settings.model_copy(update={"send_retry_s": 0.5}))
    return quarantined


def _run(monkeypatch, producer, coro):
    monkeypatch.setattr(app, "_producer", producer)
    return asyncio.run(coro)


def test_a_message_too_large_quarantines_its_inputs_and_the_rest_still_goes(monkeypatch, failures):
    out = Outbox("geo-pings", 3)
    out.add(crossing_cells, "cell-a", 17, ts=1.0)
    out.add(crossing_cells, "cell-a", 18, ts=2.0)
    out.add(crossing_cells, "cell-b-elsewhere", 19, ts=3.0)
    assert len(out.items) == 2  # two destination partitions: two messages
    producer = FakeProducer(MessageSizeTooLargeError("1200000 bytes"))
    _run(monkeypatch, producer, out.flush())
    assert len(producer.sent) == 1  # the other message was sent
    [(positions, why)] = failures
    assert positions in ([("geo-pings", 3, 17), ("geo-pings", 3, 18)], [("geo-pings", 3, 19)])
    assert "MessageSizeTooLargeError" in why
    assert orjson.loads(producer.sent[0][2])["src"] == ["geo-pings", 3]


def test_a_transient_error_is_retried_with_backoff(monkeypatch, failures):
    producer = FakeProducer(KafkaConnectionError("broker away"), KafkaConnectionError("broker away"))
    _run(monkeypatch, producer, outbox.send("some-topic", b"k", b"v", 0))
    assert producer.sent == [("some-topic", b"k", b"v", 0)] and not failures


def test_a_send_failing_past_the_retry_budget_is_undeliverable(monkeypatch, failures):
    producer = FakeProducer(*[KafkaConnectionError("broker away")] * 100)
    with pytest.raises(Undeliverable, match="KafkaConnectionError"):
        _run(monkeypatch, producer, outbox.send("some-topic", b"k", b"v", 0))
    assert 3 <= 100 - len(producer.script) <= 8  # a few attempts in 0.5 s, with backoff


def test_too_large_is_not_retried(monkeypatch, failures):
    producer = FakeProducer(MessageSizeTooLargeError("too big"), "ok")
    with pytest.raises(Undeliverable, match="2000000-byte message to t"):
        _run(monkeypatch, producer, outbox.send("t", None, b"x" * 2_000_000))
    assert producer.script == ["ok"]


def test_a_message_the_broker_refuses_after_the_send_quarantines_its_inputs(monkeypatch, failures):
    async def scenario():
        out = Outbox("connection-logs", 1)
        out.add(crossing_cells, "c", 40, ts=1.0)
        await out.flush()
        await asyncio.sleep(0.05)  # the delivery callback's quarantine task runs

    _run(monkeypatch, FakeProducer("refused later"), scenario())
    assert failures and failures[0][0] == [("connection-logs", 1, 40)]


def test_a_failing_batch_handler_quarantines_the_batch_and_the_consumer_goes_on():
    seen = []

    async def quarantine(tp, records, exc):
        seen.append((tp, [r.offset for r in records], str(exc)))

    async def handler(tp, records):
        raise RuntimeError("boom")

    consumer = types.SimpleNamespace(app=types.SimpleNamespace(_batch_quarantine=quarantine))
    records = [types.SimpleNamespace(offset=o) for o in (5, 6)]
    tp = TP("crossing-pairs", 2)
    asyncio.run(BatchConsumer._handle(consumer, handler, tp, records))
    assert seen == [(tp, [5, 6], "boom")]


def test_a_dead_letter_stays_bounded_with_size_and_hash():
    value = b"v" * 1_000_000
    letter = DeadLetter.of("geo-pings", 2, 77, b"k" * 10_000, value, "oversized", "m" * 100_000, "now", 4096)
    raw = letter.to_bytes()
    assert len(raw) < 16 * 1024
    assert base64.b64decode(letter.value_b64) == value[:4096] and letter.value_size == 1_000_000
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.key_size == 10_000 and len(base64.b64decode(letter.key_b64)) == 4096
    assert not letter.complete and (letter.source_topic, letter.partition, letter.offset) == ("geo-pings", 2, 77)
    small = DeadLetter.of("geo-pings", 0, 1, b"k", b"{}", "not_object", "m", "now", 4096)
    assert small.complete and small.raw_value() == b"{}" and small.value_size == 2
    assert DeadLetter.of("t", 0, 1, None, None, "r", "m", "now", 4096).complete
