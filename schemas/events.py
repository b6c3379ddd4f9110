"""Input records (ping, connection log, consent): the public contract, with validation.

Validation turns raw Kafka bytes into a record or a Rejection with a stable
reason code and a message naming the field and value. The JSON Schema files in
this folder are generated from these models (`crosspaths schemas export`).
"""
from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from schemas.reprs import shown
from schemas.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS, RFC3339_PATTERN, parse_ts

SCHEMA_VERSIONS = frozenset({1})
USER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
# IP addresses as Python's ipaddress.ip_address takes them (dotted quads without leading zeros;
# IPv6 with at most one "::", an embedded IPv4 tail, a zone), as a pattern JSON Schema can carry.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join([
    rf"(?:{_H}:){{7}}{_H}", rf"(?:{_H}:){{1,7}}:", rf"(?:{_H}:){{1,6}}:{_H}",
    rf"(?:{_H}:){{1,5}}(?::{_H}){{1,2}}", rf"(?:{_H}:){{1,4}}(?::{_H}){{1,3}}",
    rf"(?:{_H}:){{1,3}}(?::{_H}){{1,4}}", rf"(?:{_H}:){{1,2}}(?::{_H}){{1,5}}", rf"{_H}:(?::{_H}){{1,6}}",
    rf":(?:(?::{_H}){{1,7}}|:)",
    rf"(?:{_H}:){{6}}{_IPV4}", rf"::(?:{_H}:){{0,5}}{_IPV4}",
    *(rf"(?:{_H}:){{{k}}}:(?:{_H}:){{0,{5 - k}}}{_IPV4}" for k in range(1, 6)),
])
IP_PATTERN = rf"^(?:{_IPV4}|(?:{_IPV6})(?:%[^%/]+)?)$"
_IP = re.compile(IP_PATTERN[1:-1])


class Reason(str, Enum):
    """Stable reason codes for rejected input; producers can switch on them."""

    EMPTY = "empty"
    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_USER_ID = "bad_user_id"
    KEY_MISMATCH = "key_mismatch"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    OUT_OF_RANGE = "out_of_range"
    NOT_FINITE = "not_finite"
    NEGATIVE_ACCURACY = "negative_accuracy"
    BAD_IP = "bad_ip"
    BAD_VALUE = "bad_value"
    LATE_EVENT = "late_event"
    PROCESSING_ERROR = "processing_error"  # valid input the pipeline failed on: a bug, kept for replay
    UNDELIVERABLE = "undeliverable"  # what the pipeline made of a message could not be sent: kept for replay


def _fail(reason: Reason, message: str) -> PydanticCustomError:
    # pydantic treats braces in messages as a template; the value is already rendered.
    return PydanticCustomError(reason.value, message.replace("{", "(").replace("}", ")"))


def _ts(value: Any) -> float:
    if isinstance(value, float):
        raise _fail(Reason.BAD_TIMESTAMP, f"ts={shown(value)} is a float; use integer epoch milliseconds or an RFC 3339 string")
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise _fail(Reason.BAD_TIMESTAMP, str(exc)) from None


def _finite(name: str):
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(Reason.WRONG_TYPE, f"{name}={shown(value)} must be a number")
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            number = math.inf
        if not math.isfinite(number):
            raise _fail(Reason.NOT_FINITE, f"{name}={shown(value)} must be a finite number")
        return number

    return check


def _ip(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(Reason.WRONG_TYPE, f"ip={shown(value)} must be a string")
    try:
        if _IP.fullmatch(value) is None:  # the published pattern: no surrounding whitespace, no other forms
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _fail(Reason.BAD_IP, f"ip={shown(value)} is not an IPv4 or IPv6 address") from None


Timestamp = Annotated[
    float,
    BeforeValidator(_ts),
    WithJsonSchema(
        {
            "description": "RFC 3339 date-time with offset, or integer epoch milliseconds",
            "anyOf": [{"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN},
                      {"type": "integer", "minimum": MIN_EPOCH_MS, "maximum": MAX_EPOCH_MS}],
        }
    ),
]
UserId = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=USER_ID_PATTERN, description="Stable user identifier"),
]
def _number(name: str, description: str, **bounds: float):
    """A finite float field with bounds, and a JSON Schema saying so."""
    schema = {"type": "number", "description": description}
    schema.update({{"ge": "minimum", "le": "maximum"}[k]: v for k, v in bounds.items()})
    return Annotated[float, BeforeValidator(_finite(name)), Field(**bounds), WithJsonSchema(schema)]


Latitude = _number("lat", "WGS84 latitude, degrees", ge=-90, le=90)
Longitude = _number("lon", "WGS84 longitude, degrees", ge=-180, le=180)
Accuracy = _number("accuracy_m", "Horizontal accuracy radius, metres", ge=0)
IpAddress = Annotated[
    str,
    BeforeValidator(_ip),
    WithJsonSchema({"type": "string", "pattern": IP_PATTERN, "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    schema_version: Literal[1] = Field(1, description="Record schema version; only 1 exists")


class Ping(_Input):
    """One location fix of one user."""

    user_id: UserId
    ts: Timestamp
    lat: Latitude
    lon: Longitude
    accuracy_m: Accuracy | None = None


class ConnectionLog(_Input):
    """One connection or event-log entry."""

    user_id: UserId
    ts: Timestamp
    ip: IpAddress
    user_agent: Annotated[str, Field(max_length=2048)]
    isp: Annotated[str, Field(max_length=256)] | None = None
    language: Annotated[str, Field(max_length=256, description="An Accept-Language value")] | None = None
    event: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")] = Field(
        "app_open", description="e.g. login, app_open, page_view; login marks authenticated activity"
    )


class ConsentRecord(_Input):
    """A user's current consent state, or the account's deletion."""

    user_id: UserId
    updated_at: Timestamp
    geolocation: bool = True
    crossings: bool = True
    partner_sharing: bool = False
    deleted: bool = False


INPUT_MODELS: dict[str, type[_Input]] = {
    "ping": Ping,
    "connection-log": ConnectionLog,
    "consent": ConsentRecord,
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused: a stable code and a human message."""

    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and clock limits applied while decoding."""

    max_bytes: int = 64 * 1024
    max_future_skew_s: float = 300.0


_TYPE_ERRORS = ("_type", "_parsing", "int_from_float", "literal_error", "model_attributes_type")


def _reason_for(error: dict) -> Reason:
    kind = error["type"]
    field = str(error["loc"][0]) if error["loc"] else ""
    try:
        return Reason(kind)
    except ValueError:
        pass
    if kind == "missing":
        return Reason.MISSING_FIELD
    if field == "user_id" and kind in ("string_too_short", "string_too_long", "string_pattern_mismatch"):
        return Reason.BAD_USER_ID
    if field in ("lat", "lon") and kind in ("greater_than_equal", "less_than_equal"):
        return Reason.OUT_OF_RANGE
    if field == "accuracy_m" and kind == "greater_than_equal":
        return Reason.NEGATIVE_ACCURACY
    if field == "schema_version":
        return Reason.UNKNOWN_SCHEMA_VERSION
    if kind.endswith(_TYPE_ERRORS) or kind in _TYPE_ERRORS:
        return Reason.WRONG_TYPE
    return Reason.BAD_VALUE


def _message_for(error: dict) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "record"
    if error["type"] == "missing":
        return f"{loc} is required but missing"
    value = shown(error.get("input"))
    msg = error["msg"]
    if error["type"] in ("greater_than_equal", "less_than_equal") and loc in ("lat", "lon"):
        bound = 90 if loc == "lat" else 180
        return f"{loc}={value} is outside [-{bound}, {bound}]"
    if loc in msg:
        return msg
    return f"{loc}={value}: {msg}"


def decode(kind: str, raw: bytes | None, limits: Limits = Limits(), now: float | None = None,
           key: bytes | None = None) -> _Input | Rejection:
    """Decode and validate one raw message of `kind`; a record, or a Rejection saying why not."""
    if not raw:
        return Rejection(Reason.EMPTY, "message value is empty; expected a JSON object")
    if len(raw) > limits.max_bytes:
        return Rejection(Reason.OVERSIZED, f"message is {len(raw)} bytes; the limit is {limits.max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(Reason.NOT_UTF8, f"message is not UTF-8: invalid byte at position {exc.start}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejection(Reason.NOT_JSON, f"message is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except RecursionError:
        return Rejection(Reason.NOT_JSON, "message is not JSON this pipeline reads: arrays or objects nested too deeply")
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return Rejection(Reason.NOT_JSON, f"message is not JSON this pipeline reads: {shown(str(exc), 200)}")
    if not isinstance(data, dict):
        return Rejection(Reason.NOT_OBJECT, f"message is a JSON {type(data).__name__}; expected an object")
    version = data.get("schema_version", 1)
    if type(version) is not int or version not in SCHEMA_VERSIONS:
        return Rejection(
            Reason.UNKNOWN_SCHEMA_VERSION,
            f"schema_version={shown(version)} is not supported; supported: {sorted(SCHEMA_VERSIONS)}",
        )
    unpaired = _unpaired_surrogate(data)
    if unpaired is not None:
        return Rejection(Reason.NOT_UTF8, f"{unpaired} holds an unpaired UTF-16 surrogate (a \\ud800-\\udfff escape); "
                                          "JSON strings must be valid Unicode")
    try:
        record = INPUT_MODELS[kind].model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        return Rejection(_reason_for(first), _message_for(first))
    ts = getattr(record, "ts", None) or getattr(record, "updated_at")
    now = time.time() if now is None else now
    if ts > now + limits.max_future_skew_s:
        field = "ts" if hasattr(record, "ts") else "updated_at"
        return Rejection(
            Reason.FUTURE_TIMESTAMP,
            f"{field} is {ts - now:.0f} s in the future; the allowed clock skew is {limits.max_future_skew_s:.0f} s",
        )
    if key is not None and key != record.user_id.encode():
        return Rejection(
            Reason.KEY_MISMATCH,
            f"message key {key[:140]!r} differs from user_id={record.user_id!r}; key every message by its user_id",
        )
    return record


def _unpaired_surrogate(data: dict) -> str | None:
    """Which top-level field name or string value holds an unpaired surrogate (e.g. "ip"), else None.

    JSON allows the escape \\ud800 alone and Python decodes it to a str that cannot be encoded
    again: such a string would stop the stage that writes it out. Only top-level fields are read.
    """
    for name, value in data.items():
        if not _encodable(name):
            return f"the field name {shown(name)}"
        if isinstance(value, str) and not _encodable(value):
            return name
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


_USER_ID = re.compile(USER_ID_PATTERN[1:-1])  # fullmatch: no trailing newline, unlike `$`
_MAX_FLOAT = 1.7976931348623157e308


def decode_ping_fast(raw: bytes | None, limits: Limits, now: float, key: bytes | None = None):
    """The common case of decode("ping", ...) at a fraction of its cost: (user_id, ts, lat, lon, accuracy_m).

    Returns None whenever the message is not plainly valid; the caller then runs decode(), which
    gives the record or the exact Rejection. So this path only ever accepts what decode() accepts,
    with the same values (a property test holds it to that).
    """
    if not raw or len(raw) > limits.max_bytes:
        return None
    try:
        data = orjson.loads(raw)  # strict UTF-8 and JSON; anything else goes the slow way
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict:
        return None
    get = data.get
    version = get("schema_version", 1)
    user, ts, lat, lon = get("user_id"), get("ts"), get("lat"), get("lon")
    acc = get("accuracy_m")
    if type(version) is not int or version != 1 or type(user) is not str or _USER_ID.fullmatch(user) is None:
        return None
    tt = type(ts)
    if tt is str or tt is int:
        try:
            ts = parse_ts(ts)
        except ValueError:
            return None
    else:
        return None
    if ts > now + limits.max_future_skew_s or (key is not None and key != user.encode()):
        return None
    tl, tn = type(lat), type(lon)
    if not ((tl is float or tl is int) and (tn is float or tn is int)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # NaN fails too; huge integers compare exactly
        return None
    lat, lon = float(lat), float(lon)
    if acc is not None:
        ta = type(acc)
        if not (ta is float or ta is int) or not 0.0 <= acc <= _MAX_FLOAT:
            return None
        acc = float(acc)
    return user, ts, lat, lon, acc


def json_schema(kind: str) -> dict:
    """The JSON Schema of input record `kind`."""
    schema = INPUT_MODELS[kind].model_json_schema(mode="validation")
    _end_patterns_at_end(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://crosspaths.dev/schemas/{kind}.schema.json"
    return schema


def _end_patterns_at_end(node: object) -> None:
    """Make every `pattern` ending in `$` refuse a trailing newline in any regex engine.

    The worker matches whole strings; in ECMA-262 (JSON Schema's dialect) `$` is the end of the
    string, but in Python's re (which validators such as `jsonschema` use) `$` also matches before
    a final newline, so "login\\n" would pass there. `(?!\\n)` after the `$` means the same end in both.
    """
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.endswith("$"):
            node["pattern"] = pattern + r"(?!\n)"
        for value in node.values():
            _end_patterns_at_end(value)
    elif isinstance(node, list):
        for value in node:
            _end_patterns_at_end(value)


def schema_text(kind: str) -> str:
    """The JSON Schema of `kind` as the text stored in schemas/."""
    return json.dumps(json_schema(kind), indent=2, sort_keys=True) + "\n"
