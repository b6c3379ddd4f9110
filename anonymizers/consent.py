"""Consent rules: which purposes a user's consent allows at a given time.

Policy: geolocation and crossings are on by default and can be switched off at
any time; partner sharing is opt-in. Consent lasts at most 13 months: an opt-in
older than that counts as not given (the default-on purposes stay on, since an
expired record falls back to the defaults, and the defaults keep them on).
A deleted account allows nothing, ever.
"""
from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum


class Purpose(str, Enum):
    """What a piece of data may be used for."""

    GEOLOCATION = "geolocation"
    CROSSINGS = "crossings"
    PARTNER_SHARING = "partner_sharing"


@dataclass(frozen=True, slots=True)
class Consent:
    """A user's current consent state, as last recorded."""

    user_id: str
    updated_at: float  # epoch seconds
    geolocation: bool = True
    crossings: bool = True
    partner_sharing: bool = False
    deleted: bool = False

    def to_dict(self) -> dict:
        """A JSON-able dict of this consent."""
        return {
            "user_id": self.user_id,
            "updated_at": self.updated_at,
            "geolocation": self.geolocation,
            "crossings": self.crossings,
            "partner_sharing": self.partner_sharing,
            "deleted": self.deleted,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Consent":
        """The consent stored by to_dict."""
        return cls(**d)


def add_months(ts: float, months: int) -> float:
    """The epoch time `months` calendar months after ts (day clamped to month end)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    month0 = dt.month - 1 + months
    year, month = dt.year + month0 // 12, month0 % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return dt.replace(year=year, month=month, day=day).timestamp()


def opt_in_valid(consent: Consent, at: float, max_age_months: int = 13) -> bool:
    """Whether an opt-in recorded in `consent` is still valid at time `at`."""
    return at < add_months(consent.updated_at, max_age_months)


def allows(consent: Consent | None, purpose: Purpose, at: float, max_age_months: int = 13) -> bool:
    """Whether `consent` (None: never recorded) allows `purpose` for data at time `at`."""
    if consent is None:
        return purpose is not Purpose.PARTNER_SHARING
    if consent.deleted:
        return False
    if purpose is Purpose.GEOLOCATION:
        return consent.geolocation
    if purpose is Purpose.CROSSINGS:
        return consent.geolocation and consent.crossings
    return consent.geolocation and consent.partner_sharing and opt_in_valid(consent, at, max_age_months)


def withdrawn(before: Consent | None, after: Consent) -> frozenset[Purpose]:
    """The purposes that `after` switches off compared with `before`."""
    at = after.updated_at
    return frozenset(
        p for p in Purpose if allows(before, p, at) and not allows(after, p, at)
    )


def allowed_purposes(consent: Consent | None, at: float, max_age_months: int = 13) -> frozenset[Purpose]:
    """Every purpose `consent` allows for data at time `at`."""
    return frozenset(p for p in Purpose if allows(consent, p, at, max_age_months))


@dataclass(frozen=True, slots=True)
class PurposeSchedule:
    """allowed_purposes(consent, at) for every `at`, worked out once per consent.

    Only the partner-sharing opt-in depends on the data's time (it expires); so a consent allows
    `before` for data before `expires_at` and `after` from then on. The worker keeps one schedule
    per user instead of re-deriving purposes (and calendar months) for every ping.
    """

    before: frozenset[Purpose]
    expires_at: float
    after: frozenset[Purpose]
    version: float = 0.0  # the consent's updated_at (0: never recorded)

    def at(self, ts: float) -> frozenset[Purpose]:
        """The purposes allowed for data at time ts."""
        return self.before if ts < self.expires_at else self.after

    @classmethod
    def of(cls, consent: Consent | None, max_age_months: int = 13) -> "PurposeSchedule":
        """The schedule of `consent` (None: never recorded)."""
        if consent is None:
            never = frozenset(p for p in Purpose if allows(None, p, 0.0))
            return cls(never, float("inf"), never)
        expires = add_months(consent.updated_at, max_age_months)
        lasting = frozenset(p for p in Purpose if p is not Purpose.PARTNER_SHARING and allows(consent, p, expires))
        opted_in = not consent.deleted and consent.geolocation and consent.partner_sharing
        return cls(lasting | {Purpose.PARTNER_SHARING} if opted_in else lasting, expires, lasting, consent.updated_at)


class ConsentOutcome(str, Enum):
    """What a newly received consent record does to the user's recorded state."""

    RECORD = "record"  # becomes the user's current consent (purposes it switches off are withdrawn)
    ERASE = "erase"  # an account deletion: erase everything about the user
    STALE = "stale"  # older than the recorded consent: rejected, the newer state stays
    ERASED = "erased"  # the account was erased before: dropped (and tombstoned), never recorded again


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """The decision on one consent record and the purposes it withdraws (empty unless RECORD)."""

    outcome: ConsentOutcome
    withdrawn: frozenset[Purpose] = frozenset()


def decide_consent(previous: Consent | None, incoming: Consent, erased: bool) -> ConsentChange:
    """Last writer wins by `updated_at`: what `incoming` does given the recorded state.

    An erased account stays erased whatever arrives later. A record older than the recorded one
    never overrides it (a tie is the same moment: the later-arriving record wins, as Kafka's
    compaction keeps it). A deletion erases; anything else becomes the current state.
    """
    if erased:
        return ConsentChange(ConsentOutcome.ERASED)
    if previous is not None and previous.updated_at > incoming.updated_at:
        return ConsentChange(ConsentOutcome.STALE)
    if incoming.deleted:
        return ConsentChange(ConsentOutcome.ERASE)
    return ConsentChange(ConsentOutcome.RECORD, withdrawn(previous, incoming))


class WithdrawalGuards:
    """Which users withdrew consent, and the version withdrawn, for candidates computed before it.

    A crossing candidate carries the consent versions (`updated_at`) its two users had when their
    pings were accepted. Once a user withdraws, or is erased, with version v, every candidate
    carrying a version <= v for that user was computed from pings sent before the withdrawal and is
    dropped. Users are known by a keyed tag (never the user id); a guard is forgotten after a
    wall-clock lifetime chosen by the caller (as long as such candidates can still arrive).
    """

    def __init__(self) -> None:
        self._withdrawn: dict[str, float] = {}  # tag -> newest withdrawn consent version
        self._set_at: dict[str, float] = {}  # tag -> wall clock of the last withdrawal

    def withdraw(self, tag: str, version: float, set_at: float) -> tuple[float, float]:
        """Record a withdrawal of `tag`'s consent version `version`; returns (version, set_at) kept."""
        kept = max(self._withdrawn.get(tag, -math.inf), version)
        self._withdrawn[tag], self._set_at[tag] = kept, set_at
        return kept, set_at

    def blocks(self, tag_a: str, version_a: float, tag_b: str, version_b: float) -> bool:
        """Whether a candidate computed with these consent versions predates a withdrawal of either user."""
        return version_a <= self._withdrawn.get(tag_a, -1.0) or version_b <= self._withdrawn.get(tag_b, -1.0)

    def forget_set_before(self, before: float) -> list[str]:
        """Forget guards set before `before` (wall clock); returns their tags."""
        old = [tag for tag, at in self._set_at.items() if at < before]
        for tag in old:
            del self._withdrawn[tag], self._set_at[tag]
        return old

    def __bool__(self) -> bool:
        return bool(self._withdrawn)

    def __len__(self) -> int:
        return len(self._withdrawn)

    def snapshot(self) -> dict[str, list[float]]:
        """tag -> [withdrawn version, set at]: JSON-ready."""
        return {tag: [v, self._set_at[tag]] for tag, v in sorted(self._withdrawn.items())}

    @classmethod
    def restore(cls, snapshot: dict[str, list[float]]) -> "WithdrawalGuards":
        """Guards from a snapshot()."""
        self = cls()
        for tag, (version, set_at) in snapshot.items():
            self._withdrawn[tag], self._set_at[tag] = float(version), float(set_at)
        return self
