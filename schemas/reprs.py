"""Values shown in messages: bounded, so a hostile value never makes a message (or a dead letter) huge."""
from __future__ import annotations

SHOWN_CHARS = 80


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """repr(value), cut to about `limit` characters with how much was left out (e.g. 'aaaa…' (900000 chars))."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} chars" if isinstance(value, str) else f"{len(text)} chars as text"
    return f"{text[:limit]}… ({size})"
