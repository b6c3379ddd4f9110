"""Batch agents (streams/plumbing/bulk.py): tables see each record of a batch as the current event; bulk table recovery."""
from __future__ import annotations

import json
from types import SimpleNamespace

import faust
import pytest
from faust.streams import current_event
from faust.types import TP

from streams.plumbing.bulk import BatchConsumer, processing


def test_processing_makes_the_record_the_current_event():
    assert current_event() is None
    tp = TP("geo-pings", 3)
    with processing(tp, SimpleNamespace(offset=42)):
        event = current_event()
        assert (event.message.topic, event.message.partition, event.message.offset) == ("geo-pings", 3, 42)
        with processing(TP("geo-pings", 1), SimpleNamespace(offset=7)):
            assert current_event().message.partition == 1
        assert current_event().message.partition == 3
    assert current_event() is None


def _changelog_record(offset: int, key: str, value) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=json.dumps(key).encode(),
                           value=None if value is None else json.dumps(value).encode())


def _recovering_consumer(table, tp, seen: int | None = None, queued: bool = False):
    """What BatchConsumer._recover_in_bulk reads of Faust: its tables' recovery state and read offsets."""
    flushed = []
    recovery = SimpleNamespace(active_tps={tp}, active_offsets={tp: seen}, flush_buffers=lambda: flushed.append(1))
    tables = SimpleNamespace(recovery=recovery, _changelogs={tp.topic: table},
                             changelog_queue=SimpleNamespace(empty=lambda: not queued))
    return SimpleNamespace(app=SimpleNamespace(tables=tables), _read_offset={}), flushed


def test_changelog_records_are_applied_in_bulk_in_offset_order():
    app = faust.App("bulk-recovery-test", store="memory://")
    table = app.Table("t", default=None, partitions=2, key_type=str)
    tp = TP(table.changelog_topic.get_topic_name(), 1)
    batch = [_changelog_record(4, "old", 0), _changelog_record(5, "a", [1, 2]), _changelog_record(6, "b", {"x": 1}),
             _changelog_record(7, "a", None), _changelog_record(8, "b", None), _changelog_record(9, "b", 3),
             _changelog_record(10, "c", 4)]
    consumer, flushed = _recovering_consumer(table, tp, seen=4)
    records = {tp: batch, TP("other", 0): [_changelog_record(0, "z", 1)] * 3}
    assert BatchConsumer._recover_in_bulk(consumer, records) == 5  # offsets 5-9: 4 was seen, 10 goes Faust's way
    assert dict(table.data.data) == {"b": 3}  # a tombstone deletes, a later value comes back
    assert table.data._key_partition == {"b": 1}
    assert records[tp] == batch[-1:] and len(records[TP("other", 0)]) == 3
    assert consumer.app.tables.recovery.active_offsets[tp] == consumer._read_offset[tp] == 9
    assert flushed  # Faust's own buffered events went first


def test_changelog_records_wait_for_faust_when_its_queue_holds_older_ones():
    app = faust.App("bulk-recovery-test-2", store="memory://")
    table = app.Table("t", default=None, partitions=2, key_type=str)
    tp = TP(table.changelog_topic.get_topic_name(), 0)
    batch = [_changelog_record(0, "a", 1), _changelog_record(1, "b", 2)]
    consumer, _ = _recovering_consumer(table, tp, queued=True)
    records = {tp: list(batch)}
    assert BatchConsumer._recover_in_bulk(consumer, records) == 0
    assert records[tp] == batch and not table.data.data


def test_before_commit_hooks_run_before_faust_flushes_the_producer_and_commits(monkeypatch):
    import asyncio

    from faust.transport.drivers.aiokafka import Consumer as FaustConsumer

    calls = []

    async def faust_commit(self, offsets, start_new_transaction=True):  # producer flush, then the commit
        calls.append(("flush and commit", dict(offsets)))
        return True

    async def hook():
        await asyncio.sleep(0)  # e.g. waiting for the broker to acknowledge what it wrote
        calls.append("hook")

    async def failing():
        raise RuntimeError("the counts could not be written")

    monkeypatch.setattr(FaustConsumer, "_commit_offsets", faust_commit)
    consumer = BatchConsumer.__new__(BatchConsumer)
    consumer.app = SimpleNamespace(_before_commit=[hook])
    tp = TP("geo-pings", 0)
    assert asyncio.run(consumer._commit_offsets({tp: 5}))
    assert calls == ["hook", ("flush and commit", {tp: 5})]
    consumer.app._before_commit.append(failing)  # then the commit fails (and the worker stops)
    with pytest.raises(RuntimeError):
        asyncio.run(consumer._commit_offsets({tp: 6}))
    assert calls == ["hook", ("flush and commit", {tp: 5}), "hook"]

