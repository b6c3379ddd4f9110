"""The DP contribution bound at ingest: a user's first m cells of a window, over every partition; its state
expires with the windows, survives a restart, and is forgotten on erasure."""
from __future__ import annotations

import os
from types import SimpleNamespace

import h3
import pytest

from streams.plumbing.partitioner import partitions_for
from streams.rules import Rules
from streams.settings import Settings

H = 3600.0
W0 = 1_780_000_000 // 3600 * 3600.0


class _Store(dict):
    @property
    def data(self):  # streams.plumbing.tables.peek reads the memory store's dict
        return self


class FakeTable:
    """A Faust table's store and changelog sends, without an app."""

    def __init__(self) -> None:
        self.data = _Store()
        self.sent: list[tuple] = []

    def send_changelog(self, partition, key, value, **kwargs) -> None:
        self.sent.append((partition, key, value))


@pytest.fixture
def bound(tmp_path):
    from streams.stages.contribution import ContributionBound

    secret = tmp_path / "key"
    secret.write_bytes(os.urandom(32))
    make = lambda **kw: Rules.from_settings(Settings(pseudonym_secret_file=secret, home=tmp_path, **kw))  # noqa: E731
    return SimpleNamespace(table=FakeTable(), make=make, cls=ContributionBound)


def _record(user: str, partition: int | None = None):
    from streams.app import P

    key = user.encode()
    return SimpleNamespace(key=key, partition=partitions_for([key], P)[0] if partition is None else partition)


def _at(record) -> tuple[int, bool]:
    """(partition, home) of a keyed record on its key's partition, as the ingest stage passes them."""
    return record.partition, True


def _cell(lat: float, lon: float) -> str:
    return h3.latlng_to_cell(lat, lon, 9)


def test_a_user_counts_in_their_first_m_cells_of_a_window_only(bound):
    r = bound.make(dp_epsilon=1.0, dp_max_cells_per_user=2, dp_resolution=9)
    c = bound.cls(bound.table)
    a, b, far = _cell(48.85, 2.30), _cell(48.86, 2.31), _cell(43.30, 5.37)  # far: another statistics partition
    rec = _record("alice")
    assert [c.admit(r, *_at(rec), W0, "m1", x) for x in (a, far, b, a, far)] == [True, True, False, True, True]
    assert c.admit(r, *_at(rec), W0 + H, "m2", b) is True  # a new window, a new pseudonym: a new bound
    assert [v for *_, v in bound.table.sent] == [[a], [a, far], [b]]  # one write per new cell, none for repeats
    assert {p for p, *_ in bound.table.sent} == {rec.partition}  # at the user's input partition


def test_pings_that_could_escape_the_bound_count_nowhere(bound):
    r = bound.make(dp_epsilon=1.0, dp_max_cells_per_user=4, dp_resolution=9)
    c = bound.cls(bound.table)
    rec = _record("bob")
    # Unkeyed, or on another partition than its key's (the ingest stage says which): not counted.
    assert c.admit(r, rec.partition, False, W0, "m", _cell(48.85, 2.30)) is False
    assert bound.table.sent == []


def test_cells_outside_the_declared_area_take_none_of_the_budget(bound, tmp_path):
    area = tmp_path / "area.txt"
    inside = h3.latlng_to_cell(48.8566, 2.3522, 6)
    area.write_text(f"{inside}\n")
    r = bound.make(dp_epsilon=1.0, dp_max_cells_per_user=1, dp_resolution=8, dp_domain=area)
    c = bound.cls(bound.table)
    rec = _record("carol")
    assert c.admit(r, *_at(rec), W0, "m", _cell(43.30, 5.37)) is False  # outside
    assert c.admit(r, *_at(rec), W0, "m", _cell(48.8566, 2.3522)) is True  # the first cell inside still counts
    assert bound.table.sent[0][2] == [h3.cell_to_parent(_cell(48.8566, 2.3522), 8)]  # kept at the DP resolution


def test_state_expires_with_its_window_and_the_horizon_survives_a_restart(bound):
    r = bound.make(dp_epsilon=1.0, dp_max_cells_per_user=1, dp_resolution=9)
    c = bound.cls(bound.table)
    rec, a, b = _record("dan"), _cell(48.85, 2.30), _cell(48.86, 2.31)
    p = rec.partition
    assert c.admit(r, *_at(rec), W0, "m0", a) and c.admit(r, *_at(rec), W0 + H, "m1", a)
    # W0 + H is still open: the statistics stage may take its pings until its end plus the lateness.
    assert c.expire(r, p, W0 + 3 * H + r.stats_lateness_s - 1) == 1
    assert set(bound.table.data) == {f"{p}|{W0 + H:.0f}|m1", f"{p}|horizon"}
    assert bound.table.sent[-1] == (p, f"{p}|{W0:.0f}|m0", None)  # a tombstone in the changelog
    # Its cells forgotten, the window takes no more pings here: dan cannot count in a second cell.
    assert c.admit(r, *_at(rec), W0, "m0", b) is False
    restarted = bound.cls(bound.table)  # a new worker restored from the changelog
    assert restarted.admit(r, *_at(rec), W0, "m0", b) is False
    assert restarted.admit(r, *_at(rec), W0 + H, "m1", b) is False and restarted.admit(r, *_at(rec), W0 + H, "m1", a)
    assert c.expire(r, p, float("-inf")) == 0 and c.expire(r, p, W0) == 0  # never back


def test_forget_drops_one_users_entries_only(bound):
    r = bound.make(dp_epsilon=1.0, dp_max_cells_per_user=2, dp_resolution=9)
    c = bound.cls(bound.table)
    rec = _record("erin")
    other = next(o for o in map(_record, (f"user{i}" for i in range(100))) if o.partition == rec.partition)
    for ws, m in ((W0, "e0"), (W0 + H, "e1")):
        assert c.admit(r, *_at(rec), ws, m, _cell(48.85, 2.30))
    assert c.admit(r, *_at(other), W0, "f0", _cell(48.85, 2.30))
    assert c.forget(rec.partition, {"e0", "e1"}) == 2
    assert set(bound.table.data) == {f"{rec.partition}|{W0:.0f}|f0"}
    assert c.admit(r, *_at(rec), W0, "e0", _cell(43.30, 5.37))  # counted again from nothing, as a new user would be
