"""A hostile corpus of input messages: what the tests (unit and end to end) throw at the decoders.

Each entry is (kind, label, raw bytes, exception). `exception` is None where the published JSON
Schema and the worker must give the same verdict, or names why JSON Schema cannot say what the
worker checks (docs/DECISIONS.md lists these); for those the worker rejects and the schema accepts.
"""
from __future__ import annotations

import json

from schemas.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS

NOW_MS = 1_795_990_000_000  # 2026-11-29T...; the tests decode with now = 1_796_000_000 s
GOOD = {
    "ping": {"user_id": "u-1", "ts": "2026-11-29T10:00:00Z", "lat": 48.85, "lon": 2.35, "accuracy_m": 12},
    "connection-log": {"user_id": "u-1", "ts": NOW_MS, "ip": "2001:db8::1", "user_agent": "Mozilla/5.0",
                       "isp": "Example ISP", "language": "fr-FR", "event": "login"},
    "consent": {"user_id": "u-1", "updated_at": "2026-11-29T10:00:00+01:00", "geolocation": True,
                "crossings": False, "partner_sharing": True, "deleted": False},
}
WRONG_TYPES = (None, True, 0, -1, 1.5, "s", "", [], [1], {}, {"a": 1})
# What JSON Schema cannot express (docs/DECISIONS.md, "JSON Schemas and the worker").
MESSAGE_SIZE = "message size in bytes (CROSSPATHS_MAX_MESSAGE_BYTES)"
CALENDAR = "calendar validity of a date (February 30)"
WHOLE_FLOAT = "an integer written with a fraction (1.0): JSON Schema's integers include it"
BEYOND_DOUBLE = "a number beyond double range (1e400 reads as infinity)"
SURROGATE = "a string with an unpaired UTF-16 surrogate escape"
FUTURE = "a time too far in the future (depends on the clock)"


def _doc(kind: str, **changes) -> dict:
    doc = dict(GOOD[kind])
    for name, value in changes.items():
        if value is ...:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


def _raw(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _fields(kind: str) -> list[str]:
    return [*GOOD[kind], "schema_version"]


def hostile_corpus() -> list[tuple[str, str, bytes, str | None]]:
    """Every entry of the corpus: (kind, label, raw, exception or None)."""
    out: list[tuple[str, str, bytes, str | None]] = []
    for kind in GOOD:
        add = lambda label, raw, exception=None: out.append((kind, label, raw, exception))  # noqa: E731
        add("good", _raw(GOOD[kind]))
        add("empty", b"")
        add("not json", b'{"user_id": ')
        add("json array", b"[1, 2]")
        add("json string", b'"x"')
        add("deep nesting, arrays", b"[" * 20_000 + b"]" * 20_000)
        add("deep nesting, objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
        add("deep nesting in an unknown field", _raw(GOOD[kind])[:-1] + b', "x": ' + b"[" * 500 + b"]" * 500 + b"}")
        add("invalid utf-8", _raw(GOOD[kind])[:-1] + b', "x": "\xff\xfe"}')
        add("overlong utf-8", _raw(GOOD[kind])[:-1] + b', "x": "\xc0\xaf"}')
        add("duplicate keys, last one valid", b'{"user_id": 42, ' + _raw(GOOD[kind])[1:])
        add("duplicate keys, last one invalid", _raw(GOOD[kind])[:-1] + b', "user_id": ""}')
        add("huge unknown field", _raw(_doc(kind, x="y" * 50_000)))
        add("over the size limit", _raw(_doc(kind, x="y" * 70_000)), MESSAGE_SIZE)
        add("huge user_id", _raw(_doc(kind, user_id="a" * 60_000)))
        add("huge integer", _raw(GOOD[kind])[:-1] + b', "x": ' + b"9" * 5000 + b"}")
        add("unpaired surrogate in a field name", _raw(GOOD[kind])[:-1] + b', "\\ud800": 1}', SURROGATE)
        for field in _fields(kind):
            for value in WRONG_TYPES:
                if value is None and field in ("accuracy_m", "isp", "language"):
                    continue  # optional: null is allowed
                if isinstance(value, bool) and field in ("geolocation", "crossings", "partner_sharing", "deleted"):
                    continue
                if type(value) is int and field in ("lat", "lon", "accuracy_m") and value >= 0:
                    continue
                add(f"{field}={value!r}", _raw(_doc(kind, **{field: value})))
            add(f"{field} missing", _raw(_doc(kind, **{field: ...})))
        for constant in (b"NaN", b"Infinity", b"-Infinity"):
            add(f"user_id={constant.decode()}", _raw(GOOD[kind])[:-1] + b', "user_id": ' + constant + b"}")
        add("schema_version=2", _raw(_doc(kind, schema_version=2)))
        add("schema_version=1.0", _raw(_doc(kind, schema_version=1.0)), WHOLE_FLOAT)
        add("schema_version='1'", _raw(_doc(kind, schema_version="1")))
        for user in ("", "a" * 128, "a" * 129, "abc\n", "abc\r", "é", "Robert'); DROP", "a b", "a@b.c:d-e_f"):
            add(f"user_id={user!r}", _raw(_doc(kind, user_id=user)))
    ts_field = {"ping": "ts", "connection-log": "ts", "consent": "updated_at"}
    for kind, field in ts_field.items():
        add = lambda label, raw, exception=None: out.append((kind, label, raw, exception))  # noqa: E731
        for text in ("yesterday", "2026-11-29", "2026-11-29T10:00:00", "2026-11-29 10:00:00Z",
                     "2026-11-29T10:00:00.123456789Z", "2026-11-29t10:00:00z", "20261129T100000Z",
                     " 2026-11-29T10:00:00Z", "2026-11-29T10:00:00Z\n", "2026-13-01T00:00:00Z",
                     "2026-11-29T24:00:00Z", "2026-11-29T10:00:60Z", "2026-11-29T10:00Z", "2026-11-29T10:00:00+0100",
                     "2026-11-29T10:00:00+01", "2026-11-29T10:00:00+23:59", "2026-11-29T10:00:00,5Z",
                     "2026-W48-7T10:00:00Z", "١٢٣٤-11-29T10:00:00Z"):
            add(f"{field}={text!r}", _raw(_doc(kind, **{field: text})))
        add(f"{field}=February 30", _raw(_doc(kind, **{field: "2026-02-30T10:00:00Z"})), CALENDAR)
        add(f"{field}=year 0", _raw(_doc(kind, **{field: "0000-01-01T10:00:00Z"})), CALENDAR)
        add(f"{field} far in the future", _raw(_doc(kind, **{field: "2099-01-01T00:00:00Z"})), FUTURE)
        for ms in (MIN_EPOCH_MS - 1, MIN_EPOCH_MS, MAX_EPOCH_MS + 1, 10**30):
            add(f"{field}={ms}", _raw(_doc(kind, **{field: ms})))
        add(f"{field}=whole float", _raw(_doc(kind, **{field: float(NOW_MS)})), WHOLE_FLOAT)
        add(f"{field}=float", _raw(_doc(kind, **{field: NOW_MS + 0.5})))
    add = lambda label, raw, exception=None: out.append(("ping", label, raw, exception))  # noqa: E731
    for name, bound in (("lat", 90), ("lon", 180)):
        for value in (bound, -bound, bound + 0.001, -bound - 1e-9, 10**400):
            add(f"{name}={value}", _raw(_doc("ping", **{name: value})))
        for constant in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
            add(f"{name}={constant.decode()}", _raw(GOOD["ping"])[:-1] + f', "{name}": '.encode() + constant + b"}")
    for constant, exception in ((b"NaN", None), (b"-1e400", None), (b"1e400", BEYOND_DOUBLE)):
        add(f"accuracy_m={constant.decode()}", _raw(GOOD["ping"])[:-1] + b', "accuracy_m": ' + constant + b"}",
            exception)
    add("accuracy_m=-0.001", _raw(_doc("ping", accuracy_m=-0.001)))
    add = lambda label, raw, exception=None: out.append(("connection-log", label, raw, exception))  # noqa: E731
    for ip in ("999.1.1.1", "localhost", "1.2.3.4", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5",
               "::1", "::", "::ffff:1.2.3.4", "fe80::1%eth0", "fe80::1%", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9",
               "1:2:3:4:5:6:7::8", "1::2::3", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "2001:DB8::1", "2001:db8:::1",
               "[::1]", "1.2.3.4/24", "1.2.3.4:80", "12345::1", "g::1", ""):
        add(f"ip={ip!r}", _raw(_doc("connection-log", ip=ip)))
    for event in ("login", "page_view", "login\n", "Log In", "", "a" * 64, "a" * 65, "1login"):
        add(f"event={event!r}", _raw(_doc("connection-log", event=event)))
    for name, limit in (("user_agent", 2048), ("isp", 256), ("language", 256)):
        add(f"{name} at its limit", _raw(_doc("connection-log", **{name: "x" * limit})))
        add(f"{name} over its limit", _raw(_doc("connection-log", **{name: "x" * (limit + 1)})))
        add(f"{name} with an unpaired surrogate", _raw(_doc("connection-log"))[:-1]
            + f', "{name}": "a\\udc00b"}}'.encode(), SURROGATE)
        add(f"{name} with emoji", _raw(_doc("connection-log", **{name: "😀 é"})))
    return out
