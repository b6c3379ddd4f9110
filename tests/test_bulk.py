"""Batch agents (streams/bulk.py): Faust tables see each record of a batch as the current event."""
from __future__ import annotations

from types import SimpleNamespace

from faust.streams import current_event
from faust.types import TP

from streams.bulk import processing


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
