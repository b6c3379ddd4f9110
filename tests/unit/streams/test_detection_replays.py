"""Detection stage (streams/stages/detection.py): pings ingest sends again after a fault get no second late dead letter."""
from __future__ import annotations

from streams.stages.detection import _sent_again


def _batch(src, offsets):
    return {"src": src, "o": offsets}


def test_pings_of_input_offsets_seen_before_are_sent_again():
    seen = {}
    assert _sent_again(seen, _batch(["geo-pings", 1], [10, 10, 11, 14])) == [False] * 4  # one ping may fill two keys
    assert _sent_again(seen, _batch(["geo-pings", 2], [3])) == [False]  # input partitions apart
    # After a fault, ingest handles input partition 1 again from its committed offset 11.
    assert _sent_again(seen, _batch(["geo-pings", 1], [11, 14, 15])) == [True, True, False]
    assert seen == {("geo-pings", 1): 15, ("geo-pings", 2): 3}


def test_a_batch_without_a_readable_source_is_never_sent_again():
    seen = {}
    assert _sent_again(seen, _batch([["x"], 1], [1, 2])) == [False, False] and seen == {}
    assert _sent_again(seen, _batch(["geo-pings", 0], [None, 4])) == [False, False]
    assert _sent_again(seen, _batch(["geo-pings", 0], [None, 4])) == [False, True]
