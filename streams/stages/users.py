"""Per-user values the ingest stage derives on its hot path, cached and dropped on erasure.

Consent schedule (from the consent table), erasure tag and statistics pseudonyms are keyed
hashes or derived values of a user id; a cache holds at most `max_entries` of each, and
`forget(user)` drops everything about one user (erasure: nothing about them stays in memory).
"""
from __future__ import annotations

import functools

from anonymizers.consent import Consent, PurposeSchedule
from anonymizers.retention import erasure_tag
from streams.app import consent_table, erased_table
from streams.plumbing.tables import peek
from streams.rules import Rules
from streams.rules import rules as worker_rules


class UserCache:
    """Consent schedules, erasure tags and pseudonyms of the users this worker has seen lately."""

    max_entries = 500_000

    def __init__(self, rules: Rules | None = None) -> None:
        self._rules = rules  # None: this worker's rules, on first use (nothing is read at import)
        self._tags: dict[str, str] = {}  # user -> erasure_tag (an HMAC)
        self._schedules: dict[str, tuple[object, PurposeSchedule]] = {}  # user -> (table value, its schedule)
        self._pseudonyms: dict[tuple[str, float], str] = {}  # (user, window start) -> pseudonym

    @property
    def rules(self) -> Rules:
        if self._rules is None:
            self._rules = worker_rules()
        return self._rules

    @functools.cached_property
    def _no_consent(self) -> PurposeSchedule:
        return PurposeSchedule.of(None, self.rules.consent_max_age_months)

    def tag(self, user: str) -> str:
        """The user's keyed erasure tag."""
        found = self._tags.get(user)
        if found is None:
            if len(self._tags) >= self.max_entries:
                self._tags.clear()
            found = self._tags[user] = erasure_tag(self.rules.secret, user)
        return found

    def is_erased(self, user: str) -> bool:
        """Whether the account was erased (known by its tag only)."""
        if peek(erased_table, self.tag(user)) is None:
            return False
        self._tags.pop(user, None)  # nothing about an erased account stays in the caches
        return True

    def schedule(self, user: str) -> PurposeSchedule | None:
        """What the user's consent allows over time; None when the account was erased."""
        raw = peek(consent_table, user)
        if raw is None:
            # No consent record: defaults, unless the account was erased (its record is then gone).
            return None if self.is_erased(user) else self._no_consent
        cached = self._schedules.get(user)
        if cached is not None and cached[0] is raw:
            return cached[1]
        if len(self._schedules) >= self.max_entries:
            self._schedules.clear()
        schedule = PurposeSchedule.of(Consent.from_dict(raw), self.rules.consent_max_age_months)
        self._schedules[user] = (raw, schedule)
        return schedule

    def pseudonym(self, user: str, ws: float) -> str:
        """The user's statistics pseudonym for the window starting at ws."""
        key = (user, ws)
        found = self._pseudonyms.get(key)
        if found is None:
            if len(self._pseudonyms) >= self.max_entries:
                self._pseudonyms.clear()
            found = self._pseudonyms[key] = self.rules.pseudonyms.pseudonym(user, ws)
        return found

    def entries_of(self, user: str) -> int:
        """How many cached entries are about this user (for audits)."""
        return int(user in self._schedules) + int(user in self._tags) + sum(k[0] == user for k in self._pseudonyms)

    def forget_tag(self, user: str) -> None:
        """Drop the user's cached erasure tag (the user may be erased: keep no id beside it)."""
        self._tags.pop(user, None)

    def forget(self, user: str) -> int:
        """Drop a user's entries; returns how many there were."""
        n = int(self._schedules.pop(user, None) is not None) + int(self._tags.pop(user, None) is not None)
        for key in [k for k in self._pseudonyms if k[0] == user]:
            del self._pseudonyms[key]
            n += 1
        return n


users = UserCache()
