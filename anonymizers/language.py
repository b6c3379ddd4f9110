"""Accept-Language reduction to a single primary language subtag."""

from __future__ import annotations

UNDETERMINED = "und"
# Bounds the work on hostile headers; real browsers send a handful of entries.
_MAX_HEADER_CHARS = 1024
_MAX_ENTRIES = 32


def _quality(params: list[str]) -> float | None:
    """Return the q value of one entry's parameters, or None if malformed."""
    for param in params:
        name, sep, value = param.partition("=")
        if name.strip().lower() != "q":
            continue
        if not sep:
            return None
        value = value.strip()
        # RFC 9110 qvalue: 0 to 1 with at most three decimals; reject nan/inf/exponents.
        if not value or len(value) > 5 or any(c not in "0123456789." for c in value):
            return None
        try:
            q = float(value)
        except ValueError:
            return None
        return q if 0.0 <= q <= 1.0 else None
    return 1.0


def _primary_subtag(tag: str) -> str | None:
    """Return the lowercased ISO 639 primary subtag of a language tag, or None."""
    primary = tag.strip().replace("_", "-").split("-", 1)[0].lower()
    # 2-3 ASCII letters only: "*", private use ("x-..."), grandfathered ("i-...") and
    # free text are dropped so that the output vocabulary stays small and non-identifying.
    if 2 <= len(primary) <= 3 and primary.isascii() and primary.isalpha():
        return primary
    return None


def primary_language(accept_language: str | None) -> str:
    """Return the primary subtag of the highest-q language ("und" if none is usable)."""
    if not accept_language or not isinstance(accept_language, str):
        return UNDETERMINED
    best, best_q = UNDETERMINED, 0.0
    for entry in accept_language[:_MAX_HEADER_CHARS].split(",")[:_MAX_ENTRIES]:
        tag, *params = entry.split(";")
        primary = _primary_subtag(tag)
        q = _quality(params)
        # Strictly greater: on ties the earlier entry wins, as in the header's order.
        if primary is not None and q is not None and q > best_q:
            best, best_q = primary, q
    return best
