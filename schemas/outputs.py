"""Output records: what the pipeline writes to its topics (field names are the contract)."""
from __future__ import annotations

import base64
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
    """A rejected input message, with everything needed to find, fix and replay it."""

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None
    value_b64: str | None
    reason: str
    message: str
    rejected_at: str

    def raw_value(self) -> bytes | None:
        """The original message bytes."""
        return None if self.value_b64 is None else base64.b64decode(self.value_b64)


def b64(data: bytes | None) -> str | None:
    """Base64 text of bytes (None stays None)."""
    return None if data is None else base64.b64encode(data).decode()


class CrossingRecord(_Out):
    """One participant's view of a crossing, or a retraction (keyed by `user_id`)."""

    type: Literal["crossing", "retraction"]
    user_id: str
    other_user_id: str | None = None  # a retraction without it hides every crossing with user_id
    ts: str | None = None
    place: str | None = None  # H3 cell, never the raw fix
    place_resolution: int | None = None
    distance_band: str | None = None
    reason: str | None = None
    emitted_at: str


def crossing_bytes(user_id: str, other_user_id: str, ts: str, place: str, place_resolution: int,
                   distance_band: str, emitted_at: str) -> bytes:
    """CrossingRecord(type="crossing", ...).to_bytes(), byte for byte, without building the model.

    The pair stage writes two of these per reported crossing; a test holds the bytes equal.
    """
    return orjson.dumps({"type": "crossing", "user_id": user_id, "other_user_id": other_user_id, "ts": ts,
                         "place": place, "place_resolution": place_resolution, "distance_band": distance_band,
                         "emitted_at": emitted_at})


class LocationStat(_Out):
    """Distinct users in one H3 cell during one window (k-anonymized)."""

    window_start: str
    window_end: str
    cell: str
    resolution: int
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
