"""Retention rules: inactivity (3 years by default, then a grace period) and erasure markers.

Event-time driven and pure: callers pass `now` (the event-time clock), so the
rules are testable with a controlled clock instead of sleeping.
"""
from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from anonymizers.consent import Purpose

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


class InactivityScan:
    """When users are checked for inactivity: once per `every_s` of event time.

    `now` is an event-time clock the caller takes from the slowest input it reads (never the
    fastest): a user is then never judged against a time up to which their own input has not
    been read, so an input partition that lags behind the others (a replay, a slow producer)
    cannot make its active users look inactive.
    """

    def __init__(self, every_s: float = 3600.0) -> None:
        self.every_s = every_s
        self._scanned_at = -math.inf  # event time of the last scan

    def due(self, now: float) -> bool:
        """Whether a scan is due at event time `now` (marks it done if so)."""
        if not math.isfinite(now) or now - self._scanned_at < self.every_s:
            return False
        self._scanned_at = now
        return True


def inactivity_actions(activities: Iterable[tuple[str, Activity]], now: float,
                       params: InactivityParams) -> list[tuple[str, Action]]:
    """The users among `activities` that need a notice or an erasure at `now`, in the given order."""
    due = []
    for user, activity in activities:
        action = next_action(activity, now, params)
        if action is not Action.NONE:
            due.append((user, action))
    return due


def erasure_tag(secret: bytes, user_id: str) -> str:
    """Keyed, non-reversible marker of an erased account, so its later events can still be dropped."""
    return hmac.digest(secret, b"crosspaths/erased/v1:" + user_id.encode(), hashlib.sha256)[:16].hex()


def receipt_subject(user_id: str) -> str:
    """How an erasure receipt names its user: the SHA-256 (hex) of the user id, never the id itself.

    The backend that asked for the erasure knows the id and finds its receipt by this hash; the
    receipts topic, kept as proof long after every copy of the user is gone, holds no user id.
    """
    return hashlib.sha256(user_id.encode()).hexdigest()


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


class PurgeTarget(str, Enum):
    """A stage that holds state about users and can be asked to forget one."""

    DETECTOR = "detector_pings"  # live pings of the crossing detector (by spatial cell)
    PAIRS = "crossing_pairs"  # who met whom, per pair (cooldown); retracts the user's crossings
    LOCATIONS = "location_memberships"  # partner-statistics windows (by pseudonym)
    CONNECTIONS = "connection_memberships"  # connection-statistics windows (by pseudonym)


@dataclass(frozen=True, slots=True)
class PurgePlan:
    """What to forget about one user, where, and whether the stages report back for a receipt."""

    reason: str
    targets: frozenset[PurgeTarget]
    report: bool  # each stage partition reports what it removed (an erasure's receipt waits for them)

    @property
    def retracts_crossings(self) -> bool:
        """Whether the user's crossings are retracted (the pair stage tombstones both sides of each)."""
        return PurgeTarget.PAIRS in self.targets

    def requests(self, partitions: int) -> int:
        """How many purge requests go out (one per target stage partition): the reports a receipt waits for."""
        return len(self.targets) * partitions


def plan_erasure(reason: str) -> PurgePlan:
    """An erasure (account deletion, inactivity): every stage forgets the user and reports it."""
    return PurgePlan(reason, frozenset(PurgeTarget), report=True)


def plan_withdrawal(withdrawn: frozenset[Purpose]) -> PurgePlan | None:
    """What a consent change switching off `withdrawn` purges (None: nothing), without a receipt.

    Crossings withdrawn: the detector's pings and the pair state go, and crossings are tombstoned.
    Partner sharing withdrawn: the user leaves the open partner-statistics windows. Connection
    statistics need no consent (technical data, no personal data attached): only erasure purges them.
    """
    targets = set()
    if Purpose.CROSSINGS in withdrawn:
        targets |= {PurgeTarget.DETECTOR, PurgeTarget.PAIRS}
    if Purpose.PARTNER_SHARING in withdrawn:
        targets.add(PurgeTarget.LOCATIONS)
    return PurgePlan("consent_withdrawn", frozenset(targets), report=False) if targets else None


# Tables (by logical name) where an erasure leaves a tombstone for the user, as the receipt lists them.
ERASURE_TOMBSTONED_TABLES = ("consent-state", "activity", "pair-last", "location-members", "connection-members",
                             "receipt-drafts", "dp-bound")
