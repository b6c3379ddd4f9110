"""Inactivity rules with a controlled clock, and erasure markers."""
from __future__ import annotations

import pytest

from anonymizers.retention import DAY_S, Action, Activity, InactivityParams, erasure_tag, next_action, on_login

P = InactivityParams(inactive_s=3 * 365 * DAY_S, grace_s=30 * DAY_S)
T = 1_700_000_000.0


@pytest.mark.parametrize("activity, now, expected", [
    (Activity(T), T, Action.NONE),
    (Activity(T), T + 3 * 365 * DAY_S - 1, Action.NONE),
    (Activity(T), T + 3 * 365 * DAY_S, Action.NOTIFY),
    (Activity(T, notified_at=T + 1100 * DAY_S), T + 1100 * DAY_S + 29 * DAY_S, Action.NONE),
    (Activity(T, notified_at=T + 1100 * DAY_S), T + 1100 * DAY_S + 30 * DAY_S, Action.ERASE),
])
def test_next_action(activity, now, expected):
    assert next_action(activity, now, P) is expected


def test_login_cancels_a_pending_notice():
    notified = Activity(T, notified_at=T + 1100 * DAY_S)
    back = on_login(notified, T + 1101 * DAY_S)
    assert back == Activity(T + 1101 * DAY_S, None)
    assert next_action(back, T + 1101 * DAY_S + 30 * DAY_S, P) is Action.NONE
    assert on_login(back, T) == back  # an older login changes nothing


def test_erasure_tag_is_keyed_and_stable():
    a = erasure_tag(b"k" * 32, "alice")
    assert a == erasure_tag(b"k" * 32, "alice") and a != erasure_tag(b"j" * 32, "alice")
    assert "alice" not in a and len(a) == 32


@pytest.mark.parametrize("bad", [dict(inactive_s=0), dict(grace_s=-1)])
def test_params_name_the_bad_value(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        InactivityParams(**bad)
