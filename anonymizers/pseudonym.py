"""Rotating keyed pseudonyms: HMAC-SHA256 under a per-period key derived from a secret."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field

MIN_SECRET_BYTES = 16
PSEUDONYM_BYTES = 16
_PERIOD_KEY_LABEL = b"crosspaths/pseudonym/period-key/v1:"


@dataclass(frozen=True)
class Pseudonymizer:
    """Maps a user id to a pseudonym that is stable within a period and unlinkable across periods."""

    secret: bytes = field(repr=False)
    rotation_s: int = 86400

    def __post_init__(self) -> None:
        if not isinstance(self.secret, (bytes, bytearray)):
            raise ValueError(f"secret of type {type(self.secret).__name__} must be bytes")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"secret is {len(self.secret)} bytes long; at least {MIN_SECRET_BYTES} "
                "random bytes are required"
            )
        if isinstance(self.rotation_s, bool) or not isinstance(self.rotation_s, int) or self.rotation_s <= 0:
            raise ValueError(f"rotation_s={self.rotation_s!r} must be a positive integer")
        object.__setattr__(self, "secret", bytes(self.secret))

    def period(self, at_ts: float) -> int:
        """Return the rotation period index containing at_ts."""
        if isinstance(at_ts, bool) or not isinstance(at_ts, (int, float)) or not math.isfinite(at_ts):
            raise ValueError(f"at_ts={at_ts!r} is not a finite epoch-seconds number")
        return math.floor(at_ts / self.rotation_s)

    def period_key(self, period: int) -> bytes:
        """Derive the HMAC key of one period from the secret."""
        return hmac.digest(
            self.secret, _PERIOD_KEY_LABEL + str(period).encode("ascii"), hashlib.sha256
        )

    def pseudonym(self, user_id: str, at_ts: float) -> str:
        """Return the 32-hex-char pseudonym of user_id for the period containing at_ts."""
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"user_id={user_id!r} must be a non-empty string")
        key = self.period_key(self.period(at_ts))
        return hmac.digest(key, user_id.encode("utf-8"), hashlib.sha256)[:PSEUDONYM_BYTES].hex()
