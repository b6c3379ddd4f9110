"""Output records: what the pipeline writes to its topics (field names are the contract)."""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        """The record as compact UTF-8 JSON."""
        return self.model_dump_json(exclude_none=True).encode()


class DeadLetter(_Out):
    """A rejected input message, with everything needed to find, fix and replay it.

    Bounded in size whatever the message: the key and value are carried whole up to a prefix
    length (`dead_letter_prefix_bytes`), beyond that as their first bytes, with the full size and
    a SHA-256 of the full bytes; the message itself stays at (source_topic, partition, offset)
    until the topic's retention. A dead letter is therefore never too large to be sent.
    """

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None
    value_b64: str | None
    reason: str
    message: str
    rejected_at: str
    key_size: int | None = None  # bytes of the full key (key_b64 may hold only the first ones)
    key_sha256: str | None = None  # hex SHA-256 of the full key
    value_size: int | None = None
    value_sha256: str | None = None

    @classmethod
    def of(cls, source_topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
           reason: str, message: str, rejected_at: str, prefix_bytes: int) -> "DeadLetter":
        """The dead letter of a message at a source position: bounded prefixes, sizes, hashes, a bounded message."""
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}… ({len(message)} chars)"
        return cls(source_topic=source_topic[:MAX_TOPIC_CHARS], partition=partition, offset=offset,
                   key_b64=b64(None if key is None else key[:prefix_bytes]),
                   value_b64=b64(None if value is None else value[:prefix_bytes]),
                   reason=reason, message=message, rejected_at=rejected_at,
                   key_size=None if key is None else len(key), key_sha256=_sha256(key),
                   value_size=None if value is None else len(value), value_sha256=_sha256(value))

    def raw_value(self) -> bytes | None:
        """The original message bytes, or their first bytes if `complete` is False."""
        return None if self.value_b64 is None else base64.b64decode(self.value_b64)

    @property
    def complete(self) -> bool:
        """Whether key_b64 and value_b64 hold the whole key and value (else: prefixes, see the sizes)."""
        return all(size is None or text is None or len(base64.b64decode(text)) == size
                   for text, size in ((self.key_b64, self.key_size), (self.value_b64, self.value_size)))


MAX_MESSAGE_CHARS = 2000  # a reason's explanation; values in it are cut already (schemas.reprs)
MAX_TOPIC_CHARS = 249  # Kafka's own limit on topic names


def _sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def b64(data: bytes | None) -> str | None:
    """Base64 text of bytes (None stays None)."""
    return None if data is None else base64.b64encode(data).decode()


class CrossingRecord(_Out):
    """One participant's view of a pair's crossing, keyed by `crossing_key(user_id, other_user_id)`.

    The `crossings` topic is compacted: the latest record under a key is what `user_id` is shown
    about `other_user_id` (their latest cooldown period's earliest crossing; a later record with
    the same key corrects or updates it), and a tombstone (a null value) under the key means
    "stop showing it" (a withdrawal, an erasure).
    """

    type: Literal["crossing"]
    user_id: str
    other_user_id: str
    ts: str
    place: str  # H3 cell, never the raw fix
    place_resolution: int
    distance_band: str
    emitted_at: str


def crossing_key(user_id: str, other_user_id: str) -> bytes:
    """The key of `user_id`'s records about `other_user_id` on `crossings`: "<user_id>|<other_user_id>".

    "|" never occurs in a user id (schemas.events.USER_ID_PATTERN), so the key splits back
    unambiguously (`split_crossing_key`). Records are placed by `user_id` alone (Kafka's default
    partitioner on the user id), so each participant's records share one partition.
    """
    return f"{user_id}|{other_user_id}".encode()


def split_crossing_key(key: bytes) -> tuple[str, str]:
    """(user_id, other_user_id) of a `crossings` key."""
    user, sep, other = key.decode().partition("|")
    if not sep or not user or not other or "|" in other:
        raise ValueError(f"crossings key {key[:140]!r} is not '<user_id>|<other_user_id>'")
    return user, other


def crossing_bytes(user_id: str, other_user_id: str, ts: str, place: str, place_resolution: int,
                   distance_band: str, emitted_at: str) -> bytes:
    """CrossingRecord(type="crossing", ...).to_bytes(), byte for byte, without building the model.

    The pair stage writes two of these per reported crossing; a test holds the bytes equal.
    """
    return orjson.dumps({"type": "crossing", "user_id": user_id, "other_user_id": other_user_id, "ts": ts,
                         "place": place, "place_resolution": place_resolution, "distance_band": distance_band,
                         "emitted_at": emitted_at})


class LocationStat(_Out):
    """Distinct users in one region during one window (k-anonymized; anonymizers/regions.py).

    A region is an H3 cell (`region == cell`, `members == [cell]`), or the remainder of `cell`:
    `cell` minus the regions published inside it in the same window (`region == "<cell>-rest"`, or
    `"<cell>-rest-<i>"` for each group when it is split; `members` = the H3 cells, at several
    resolutions, whose union it is). Regions of one window never overlap; `resolution` is that of `cell`.
    """

    window_start: str
    window_end: str
    region: str
    cell: str
    resolution: int
    members: list[str]
    users: int
    k: int
    noisy: bool = False


class ConnectionStat(_Out):
    """Distinct users of one group of technical attributes during one window (k-anonymized)."""

    window_start: str
    window_end: str
    group_by: list[str]
    group: list[str]
    users: int
    k: int


def loads(raw: bytes) -> dict:
    """Parse a JSON record written by this module."""
    return json.loads(raw)
