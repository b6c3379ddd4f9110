"""Retention rules: inactivity (3 years by default, then a grace period) and erasure markers.

Event-time driven and pure: callers pass `now` (the event-time clock), so the
rules are testable with a controlled clock instead of sleeping.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
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


def erasure_of(report: dict) -> float | None:
    """The time of the erasure a report belongs to (None: a report from before reports carried it)."""
    return report["requested_at"] if report["stage"] == "ingest" else report.get("v")


@dataclass
class ReceiptDraft:
    """What the stages reported so far for one erasure; complete once every purge request answered.

    The ingest stage's report says how many purge requests went out (`expect`), one per stage
    partition; each stage partition answers once with what it removed. Reports are delivered at
    least once: an answer seen again (same stage, same partition) counts once, so a receipt is
    never issued before every stage partition has purged, nor with doubled counts.
    """

    expect: int | None = None
    reason: str | None = None
    requested_at: float | None = None
    purged: dict[str, int] = field(default_factory=dict)
    answered: set[tuple[str, int]] = field(default_factory=set)

    def add(self, report: dict) -> None:
        """Take one report: {"stage": "ingest", "expect", "reason", "requested_at", "removed": {...}}
        or {"stage": name, "partition": p, "removed": n}."""
        stage = report["stage"]
        if stage == "ingest":
            if self.expect is not None:
                return  # the same request's report, delivered again
            self.expect, self.reason, self.requested_at = report["expect"], report["reason"], report["requested_at"]
            for name, n in report["removed"].items():
                self.purged[name] = self.purged.get(name, 0) + n
            return
        partition = report.get("partition")
        answer = (stage, partition if partition is not None else -1 - len(self.answered))  # no partition: distinct
        if answer in self.answered:
            return
        self.answered.add(answer)
        self.purged[stage] = self.purged.get(stage, 0) + report["removed"]

    @property
    def complete(self) -> bool:
        return self.expect is not None and len(self.answered) >= self.expect

    def to_json(self) -> dict:
        return {"expect": self.expect, "reason": self.reason, "requested_at": self.requested_at,
                "purged": dict(self.purged), "answered": sorted([s, p] for s, p in self.answered)}

    @classmethod
    def from_json(cls, doc: dict) -> "ReceiptDraft":
        return cls(doc["expect"], doc["reason"], doc["requested_at"], dict(doc["purged"]),
                   {(s, p) for s, p in doc["answered"]})
