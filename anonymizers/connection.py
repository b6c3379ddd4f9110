"""Connection-log reduction: technical data without any personal identifier."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from anonymizers.ip import ip_version, truncate_ip
from anonymizers.language import primary_language
from anonymizers.useragent import reduce_user_agent

UNKNOWN_ISP = "unknown"
_MAX_LABEL_CHARS = 64


@dataclass(frozen=True, slots=True)
class ReducedConnection:
    """One connection-log entry after reduction; carries no user id by construction."""

    ts: float
    ip_prefix: str
    ip_version: int
    isp: str
    browser_family: str
    browser_major: str
    os_family: str
    device_class: str
    language: str
    event: str


# ts is the window's business, never a grouping dimension.
GROUPABLE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ReducedConnection) if f.name != "ts"
)


def _label(value: str | None, name: str, default: str | None) -> str:
    """Normalize a free-text label (trimmed, lowercased, bounded length)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is None:
            raise ValueError(f"{name}={value!r} must be a non-empty string")
        return default
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} is not a string")
    return " ".join(value.split()).lower()[:_MAX_LABEL_CHARS]


def reduce_connection(
    *,
    ts: float,
    ip: str,
    user_agent: str | None,
    event: str,
    isp: str | None = None,
    language: str | None = None,
) -> ReducedConnection:
    """Reduce one connection log's technical fields (the user id is never an input)."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError(f"ts={ts!r} is not a finite epoch-seconds number")
    ua = reduce_user_agent("" if user_agent is None else user_agent)
    return ReducedConnection(
        ts=float(ts),
        ip_prefix=truncate_ip(ip),
        ip_version=ip_version(ip),
        isp=_label(isp, "isp", UNKNOWN_ISP),
        browser_family=ua.browser_family,
        browser_major=ua.browser_major,
        os_family=ua.os_family,
        device_class=ua.device_class,
        language=primary_language(language),
        event=_label(event, "event", None),
    )


def validate_group_by(group_by: tuple[str, ...]) -> tuple[str, ...]:
    """Check a group-by spec: non-empty, no duplicates, only groupable fields."""
    if isinstance(group_by, str) or not isinstance(group_by, (tuple, list)):
        raise ValueError(f"group_by={group_by!r} must be a tuple of field names")
    if not group_by:
        # An empty group is a grand total, which would let "other" be recovered by subtraction.
        raise ValueError("group_by=() must name at least one field")
    for name in group_by:
        if name not in GROUPABLE_FIELDS:
            raise ValueError(
                f"group_by field {name!r} is not one of {', '.join(GROUPABLE_FIELDS)}"
            )
    if len(set(group_by)) != len(group_by):
        raise ValueError(f"group_by={tuple(group_by)!r} names a field twice")
    return tuple(group_by)


def group_key(reduced: ReducedConnection, group_by: tuple[str, ...]) -> tuple[str, ...]:
    """Return the values of the group_by fields, as strings, in group_by order."""
    return tuple(str(getattr(reduced, name)) for name in validate_group_by(group_by))
