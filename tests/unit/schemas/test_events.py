"""Input validation: every bad input gets a stable reason code and a message naming the value."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.events import INPUT_MODELS, ConnectionLog, ConsentRecord, Limits, Ping, Reason, Rejection, decode, schema_text

NOW = 1_796_000_000.0  # 2026-11-30T...
GOOD_PING = {"user_id": "u-1", "ts": "2026-11-29T10:00:00Z", "lat": 48.85, "lon": 2.35, "accuracy_m": 12}
GOOD_LOG = {"user_id": "u-1", "ts": 1_795_990_000_000, "ip": "2001:db8::1", "user_agent": "Mozilla/5.0",
            "language": "fr-FR", "event": "login"}


def _with(doc: dict, **changes) -> bytes:
    d = dict(doc)
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


BAD_PINGS = [
    (b"", Reason.EMPTY, "empty"),
    (b"x" * 70_000, Reason.OVERSIZED, "70000 bytes"),
    (b'{"user_id": "\xff"}', Reason.NOT_UTF8, "UTF-8"),
    (b'{"user_id": "u-1", ', Reason.NOT_JSON, "not JSON"),
    (b"[1, 2]", Reason.NOT_OBJECT, "list"),
    (b'"ping"', Reason.NOT_OBJECT, "str"),
    (_with(GOOD_PING, schema_version=2), Reason.UNKNOWN_SCHEMA_VERSION, "schema_version=2"),
    (_with(GOOD_PING, lat=...), Reason.MISSING_FIELD, "lat is required"),
    (_with(GOOD_PING, user_id=...), Reason.MISSING_FIELD, "user_id is required"),
    (_with(GOOD_PING, lat=123.4), Reason.OUT_OF_RANGE, "lat=123.4 is outside [-90, 90]"),
    (_with(GOOD_PING, lon=-180.5), Reason.OUT_OF_RANGE, "lon=-180.5 is outside [-180, 180]"),
    (b'{"user_id": "u-1", "ts": 1795990000000, "lat": NaN, "lon": 2}', Reason.NOT_FINITE, "lat=nan"),
    (b'{"user_id": "u-1", "ts": 1795990000000, "lat": 1, "lon": Infinity}', Reason.NOT_FINITE, "lon=inf"),
    (_with(GOOD_PING, lat="48.85"), Reason.WRONG_TYPE, "lat='48.85' must be a number"),
    (_with(GOOD_PING, lat=True), Reason.WRONG_TYPE, "lat=True"),
    (_with(GOOD_PING, user_id=42), Reason.WRONG_TYPE, "user_id=42"),
    (_with(GOOD_PING, user_id=""), Reason.BAD_USER_ID, "user_id=''"),
    (_with(GOOD_PING, user_id="a" * 129), Reason.BAD_USER_ID, "user_id="),
    (_with(GOOD_PING, user_id="Robert'); DROP"), Reason.BAD_USER_ID, "pattern"),
    (_with(GOOD_PING, ts="yesterday"), Reason.BAD_TIMESTAMP, "ts='yesterday'"),
    (_with(GOOD_PING, ts="2026-11-29T10:00:00"), Reason.BAD_TIMESTAMP, "no UTC offset"),
    (_with(GOOD_PING, ts=1795990000000.5), Reason.BAD_TIMESTAMP, "float"),
    (_with(GOOD_PING, ts=17959900), Reason.BAD_TIMESTAMP, "outside years 2000-2100"),
    (_with(GOOD_PING, ts=True), Reason.BAD_TIMESTAMP, "boolean"),
    (_with(GOOD_PING, ts="2026-12-30T10:00:00Z"), Reason.FUTURE_TIMESTAMP, "in the future"),
    (_with(GOOD_PING, accuracy_m=-1), Reason.NEGATIVE_ACCURACY, "accuracy_m=-1"),
]


@pytest.mark.parametrize("raw, reason, fragment", BAD_PINGS, ids=[r[1].value + str(i) for i, r in enumerate(BAD_PINGS)])
def test_bad_pings_are_rejected_with_reason(raw, reason, fragment):
    result = decode("ping", raw, Limits(), now=NOW)
    assert isinstance(result, Rejection), result
    assert result.reason is reason
    assert fragment in result.message


BAD_LOGS = [
    (_with(GOOD_LOG, ip="300.1.2.3"), Reason.BAD_IP, "ip='300.1.2.3'"),
    (_with(GOOD_LOG, ip="2001:db8:::1"), Reason.BAD_IP, "IPv4 or IPv6"),
    (_with(GOOD_LOG, ip=17), Reason.WRONG_TYPE, "ip=17"),
    (_with(GOOD_LOG, user_agent=...), Reason.MISSING_FIELD, "user_agent is required"),
    (_with(GOOD_LOG, event="Log In"), Reason.BAD_VALUE, "event="),
]


@pytest.mark.parametrize("raw, reason, fragment", BAD_LOGS)
def test_bad_connection_logs_are_rejected_with_reason(raw, reason, fragment):
    result = decode("connection-log", raw, Limits(), now=NOW)
    assert isinstance(result, Rejection), result
    assert (result.reason, fragment in result.message) == (reason, True), result.message


@pytest.mark.parametrize("raw, reason", [
    (b'{"user_id": "u-1", "updated_at": 1795990000000, "deleted": "yes"}', Reason.WRONG_TYPE),
    (b'{"user_id": "u-1", "geolocation": false}', Reason.MISSING_FIELD),
    (b'{"user_id": "u-1", "updated_at": 1795990000000, "partner_sharing": 1}', Reason.WRONG_TYPE),
])
def test_bad_consents_are_rejected_with_reason(raw, reason):
    result = decode("consent", raw, Limits(), now=NOW)
    assert isinstance(result, Rejection) and result.reason is reason


def test_good_records_decode_with_defaults():
    ping = decode("ping", _with(GOOD_PING), now=NOW)
    assert isinstance(ping, Ping) and ping.accuracy_m == 12.0 and ping.ts == 1_795_946_400.0
    log = decode("connection-log", _with(GOOD_LOG), now=NOW)
    assert isinstance(log, ConnectionLog) and log.ip == "2001:db8::1" and log.ts == 1_795_990_000.0
    consent = decode("consent", b'{"user_id": "u-1", "updated_at": "2026-11-01T00:00:00+01:00"}', now=NOW)
    assert isinstance(consent, ConsentRecord)
    assert (consent.geolocation, consent.crossings, consent.partner_sharing, consent.deleted) == (True, True, False, False)


def test_epoch_millis_and_rfc3339_agree():
    a = decode("ping", _with(GOOD_PING, ts="2026-11-29T10:00:00.250Z"), now=NOW)
    b = decode("ping", _with(GOOD_PING, ts=1_795_946_400_250), now=NOW)
    assert a.ts == b.ts


def test_key_must_match_user_id():
    result = decode("ping", _with(GOOD_PING), now=NOW, key=b"u-2")
    assert isinstance(result, Rejection) and result.reason is Reason.KEY_MISMATCH
    assert isinstance(decode("ping", _with(GOOD_PING), now=NOW, key=b"u-1"), Ping)


def test_future_skew_is_configurable():
    raw = _with(GOOD_PING, ts=int((NOW + 600) * 1000))
    assert isinstance(decode("ping", raw, Limits(max_future_skew_s=300), now=NOW), Rejection)
    assert isinstance(decode("ping", raw, Limits(max_future_skew_s=900), now=NOW), Ping)


@pytest.mark.parametrize("kind", sorted(INPUT_MODELS))
def test_json_schema_files_match_the_code(kind):
    path = Path(__file__).resolve().parents[3] / "schemas" / f"{kind}.schema.json"
    assert path.read_text() == schema_text(kind), f"{path.name} is stale: run `crosspaths schemas export`"


def test_json_schema_states_the_ranges():
    schema = json.loads(schema_text("ping"))
    assert schema["properties"]["lat"]["minimum"] == -90 and schema["properties"]["lat"]["maximum"] == 90
    assert set(schema["required"]) == {"user_id", "ts", "lat", "lon"}


from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
FIELDS = ["user_id", "ts", "lat", "lon", "accuracy_m", "ip", "user_agent", "isp", "language", "event",
          "updated_at", "geolocation", "crossings", "partner_sharing", "deleted", "schema_version"]


@pytest.mark.parametrize("kind", sorted(INPUT_MODELS))
@hsettings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=200))
def test_decode_never_raises_on_arbitrary_bytes(kind, raw):
    result = decode(kind, raw, Limits(), now=NOW, key=b"u-1")
    assert isinstance(result, (Rejection, INPUT_MODELS[kind]))


@pytest.mark.parametrize("kind", sorted(INPUT_MODELS))
@hsettings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10))
def test_decode_never_raises_on_arbitrary_json_objects(kind, doc):
    raw = json.dumps(doc).encode()
    result = decode(kind, raw, Limits(), now=NOW)
    assert isinstance(result, (Rejection, INPUT_MODELS[kind]))
    if isinstance(result, Rejection):
        assert result.message and result.reason in Reason


# The worker's fast path for pings: it may decline (None, then decode() runs) but never disagree.
from schemas.events import decode_ping_fast  # noqa: E402
from schemas.timefmt import format_ts  # noqa: E402

ping_field_values = {
    "user_id": st.from_regex(r"[A-Za-z0-9._:@-]{1,130}", fullmatch=True) | st.text(max_size=5) | json_values,
    "ts": st.integers(min_value=900_000_000_000, max_value=1_800_000_000_000)
    | st.datetimes().map(lambda d: d.isoformat() + "Z") | st.sampled_from(["2026-11-29T10:00:00Z",
                                                                          "2026-11-29T10:00:00+01:00",
                                                                          "2026-11-29 10:00:00", " 2026-11-29T10:00:00Z\n"])
    | json_values,
    "lat": st.floats(min_value=-91, max_value=91) | st.integers(-100, 100) | json_values,
    "lon": st.floats(min_value=-181, max_value=181) | st.integers(-200, 200) | json_values,
    "accuracy_m": st.floats(min_value=-1, max_value=1e6) | st.integers(-5, 500) | json_values,
    "schema_version": st.sampled_from([1, 2, 1.0, True, "1"]) | json_values,
    "extra": json_values,
}


def _fields(doc: dict) -> tuple:
    return doc.user_id, doc.ts, doc.lat, doc.lon, doc.accuracy_m


@hsettings(max_examples=600, deadline=None)
@given(doc=st.fixed_dictionaries({}, optional=ping_field_values), key=st.sampled_from([None, "user", b"other"]),
       garble=st.sampled_from([None, b"\xff", b" ", b"NaN"]))
def test_fast_ping_decode_agrees_with_decode(doc, key, garble):
    raw = json.dumps(doc).encode()
    if garble:
        raw = raw[:-1] + garble + raw[-1:]
    k = str(doc.get("user_id")).encode() if key == "user" else key
    fast = decode_ping_fast(raw, Limits(), NOW, key=k)
    slow = decode("ping", raw, Limits(), now=NOW, key=k)
    if fast is not None:
        assert isinstance(slow, Ping), (fast, slow)
        assert fast == _fields(slow)


@hsettings(max_examples=200, deadline=None)
@given(user=st.from_regex(r"[A-Za-z0-9._:@-]{1,128}", fullmatch=True),
       ts=st.one_of(st.integers(1_700_000_000_000, 1_795_000_000_000),
                    st.integers(1_700_000_000, 1_795_000_000).map(lambda s: format_ts(s))),
       lat=st.floats(-90, 90), lon=st.floats(-180, 180), acc=st.none() | st.floats(0, 5000))
def test_fast_ping_decode_takes_every_well_formed_ping(user, ts, lat, lon, acc):
    """The fast path is the common path: a well-formed ping never falls back to pydantic."""
    doc = {"schema_version": 1, "user_id": user, "ts": ts, "lat": lat, "lon": lon, "accuracy_m": acc}
    raw = json.dumps(doc).encode()
    fast = decode_ping_fast(raw, Limits(), NOW, key=user.encode())
    assert fast is not None
    assert fast == _fields(decode("ping", raw, Limits(), now=NOW, key=user.encode()))


# The pair stage writes crossing records without pydantic; the bytes must be the model's.
from schemas.outputs import CrossingRecord, crossing_bytes  # noqa: E402

user_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,128}", fullmatch=True)


@hsettings(max_examples=200, deadline=None)
@given(user=user_ids, other=user_ids, ts=st.integers(1_700_000_000, 1_800_000_000), place=st.text(max_size=20),
       resolution=st.integers(0, 15), band=st.text(max_size=12))
def test_crossing_bytes_equal_the_model(user, other, ts, place, resolution, band):
    at = format_ts(ts)
    expected = CrossingRecord(type="crossing", user_id=user, other_user_id=other, ts=at, place=place,
                              place_resolution=resolution, distance_band=band, emitted_at=at).to_bytes()
    assert crossing_bytes(user, other, at, place, resolution, band, at) == expected


@hsettings(max_examples=400, deadline=None)
@given(t=st.one_of(st.floats(0, 4.2e9, allow_nan=False), st.integers(0, 4_200_000_000).map(float),
                   st.integers(0, 4_200_000_000).map(lambda s: s + 0.9995),
                   st.integers(0, 4_200_000_000).map(lambda s: s + 0.9999995),
                   st.integers(0, 4_200_000).map(lambda ms: ms * 1000 + 0.0005)))
def test_format_ts_is_datetimes_isoformat(t):
    """format_ts (cached per second) gives what datetime's isoformat gives, rounding included."""
    from datetime import datetime, timezone

    expected = datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert format_ts(t) == expected
