"""Statistics window state (streams/plumbing/windowstate.py): an event delivered again after a fault is not late."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from faust.types import TP

from streams.plumbing.bulk import processing
from streams.plumbing.windowstate import SEP, TableBackedWindows

W = 3600 * 10  # the 10:00 window
MARKER = f"0{SEP}{W}"


def _windows(published: dict | None = None, members: dict | None = None) -> TableBackedWindows:
    return TableBackedWindows("t", {} if members is None else members, {} if published is None else published,
                              3600, 300, sources=range(4))


def _closed_at(offset: int) -> TableBackedWindows:
    """Partition 0's 10:00 window, closed by stage message `offset` after input offsets 7 (source 1) and 3 (source 2)."""
    w = _windows()
    w.add(0, W + 5, "cell", "m1", source=1, offset=offset - 2, input_offset=7)
    w.add(0, W + 9, "cell", "m2", source=2, offset=offset - 1, input_offset=3)
    for source in range(4):
        w.advance(0, source, W + 3600 + 300)
    assert [c.members for c in w.close(0, offset=offset)] == [{"cell": {"m1", "m2"}}]
    return w


def test_a_window_remembers_where_the_stage_was_when_it_closed():
    w = _closed_at(11)
    assert w.published[MARKER] == {"at": 12, "inputs": {"1": 7, "2": 3}}
    assert w.published[f"0{SEP}inputs"] == {"1": 7, "2": 3}


@pytest.mark.parametrize("offset, source, input_offset, verdict", [
    (10, 1, 7, "seen"),  # the stage message delivered again (not committed before a fault)
    (11, 3, 0, "seen"),  # the message that closed it
    (20, 1, 7, "seen"),  # ingest handled the input message again and sent it in a new stage message
    (20, 2, 2, "seen"),
    (20, 1, 8, "late"),  # handled after the window closed: late the first time too
    (20, 3, 0, "late"),
    (None, 1, None, "late"),  # position unknown
])
def test_an_event_handled_before_its_window_closed_is_seen_not_late(offset, source, input_offset, verdict):
    live = _closed_at(11)
    rebuilt = _windows(live.published)  # a new owner of the partition, from the tables
    for w in (live, rebuilt):
        assert w.add(0, W + 60, "cell", "m3", source=source, offset=offset, input_offset=input_offset) == verdict


def test_a_new_owner_keeps_the_input_offsets_handled_since_the_last_close():
    live = _closed_at(11)
    live.add(0, W + 3600 + 10, "cell", "m4", source=1, offset=12, input_offset=30)  # the next window
    live.close(0, offset=12)
    rebuilt = _windows(live.published, live.members)
    for source in range(4):
        rebuilt.advance(0, source, W + 7200 + 300)
    rebuilt.close(0, offset=13)
    assert rebuilt.published[f"0{SEP}{W + 3600}"]["inputs"]["1"] == 30


def test_a_window_published_before_markers_said_where_makes_everything_late():
    assert _windows({MARKER: True}).add(0, W + 60, "cell", "m1", source=1, offset=0, input_offset=0) == "late"


def test_the_stage_offset_defaults_to_the_message_being_handled():
    w = _windows()
    w.add(0, W + 5, "cell", "m1", source=0)
    for source in range(4):
        w.advance(0, source, W + 3600 + 300)
    with processing(TP("stats-cells", 0), SimpleNamespace(offset=41)):
        w.close(0)
        assert w.add(0, W + 60, "cell", "m2", source=0) == "seen"
    with processing(TP("stats-cells", 0), SimpleNamespace(offset=42)):
        assert w.add(0, W + 60, "cell", "m2", source=0) == "late"
