"""Retention rules: inactivity (3 years by default, then a grace period) and erasure markers.

Event-time driven and pure: callers pass `now` (the event-time clock), so the
rules are testable with a controlled clock instead of sleeping.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class InactivityParams:
    """How long without authenticated activity before a notice, and before erasure after it."""

    inactive_s: float = 3 * 365 * DAY_S
    grace_s: float = 30 * DAY_S

    def __post_init__(self) -> None:
        if not self.inactive_s > 0:
            raise ValueError(f"inactive_s={self.inactive_s!r} must be > 0")
        if not self.grace_s >= 0:
            raise ValueError(f"grace_s={self.grace_s!r} must be >= 0")


class Action(str, Enum):
    """What the inactivity rule asks for, for one user, now."""

    NONE = "none"
    NOTIFY = "notify"
    ERASE = "erase"


@dataclass(frozen=True, slots=True)
class Activity:
    """A user's last authenticated activity and, if sent, when the inactivity notice went out."""

    last_login: float
    notified_at: float | None = None

    def to_dict(self) -> dict:
        """A JSON-able dict."""
        return {"last_login": self.last_login, "notified_at": self.notified_at}

    @classmethod
    def from_dict(cls, d: dict) -> "Activity":
        """The Activity stored by to_dict."""
        return cls(d["last_login"], d.get("notified_at"))


def on_login(previous: Activity | None, ts: float) -> Activity:
    """The activity after a login at ts: a return cancels any pending notice."""
    if previous is None or ts >= previous.last_login:
        return Activity(ts, None)
    return previous  # an older login changes nothing


def next_action(activity: Activity, now: float, params: InactivityParams) -> Action:
    """NOTIFY once the user has been inactive for inactive_s; ERASE grace_s after the notice."""
    if activity.notified_at is not None:
        return Action.ERASE if now >= activity.notified_at + params.grace_s else Action.NONE
    return Action.NOTIFY if now >= activity.last_login + params.inactive_s else Action.NONE


def erasure_tag(secret: bytes, user_id: str) -> str:
    """Keyed, non-reversible marker of an erased account, so its later events can still be dropped."""
    return hmac.digest(secret, b"crosspaths/erased/v1:" + user_id.encode(), hashlib.sha256)[:16].hex()
