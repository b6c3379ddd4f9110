"""The hostile corpus against the worker's decoder and a standard JSON Schema validator.

The published schemas must reject what the worker rejects wherever JSON Schema can say it; the
entries where it cannot are named in the corpus (tests/hostile.py) and in docs/DECISIONS.md.
"""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import IP_PATTERN, Limits, Rejection, decode, decode_ping_fast
from tests.hostile import hostile_corpus

NOW = 1_796_000_000.0
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
CORPUS = hostile_corpus()


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)  # formats are annotations only, as in most validators


VALIDATORS = {kind: _validator(kind) for kind in ("ping", "connection-log", "consent")}


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def schema_accepts(kind: str, raw: bytes) -> bool:
    """What a producer gets from a strict JSON parser (RFC 8259) and a standard validator."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, NaN/Infinity, too deep, too many digits
        return False
    return VALIDATORS[kind].is_valid(doc)


def worker_accepts(kind: str, raw: bytes) -> bool:
    return not isinstance(decode(kind, raw, Limits(), now=NOW), Rejection)


def test_the_issue_examples_are_rejected_by_the_schema():
    assert not schema_accepts("ping", b'{"user_id": "u", "ts": "yesterday", "lat": 1, "lon": 2}')
    for ip in ("999.1.1.1", "localhost"):
        raw = json.dumps({"user_id": "u", "ts": 1_795_990_000_000, "ip": ip, "user_agent": "x"}).encode()
        assert not schema_accepts("connection-log", raw)
        assert not worker_accepts("connection-log", raw)


@pytest.mark.parametrize("kind, label, raw, exception", CORPUS, ids=[f"{c[0]}:{c[1][:60]}" for c in CORPUS])
def test_schema_and_worker_agree_on_the_hostile_corpus(kind, label, raw, exception):
    worker, schema = worker_accepts(kind, raw), schema_accepts(kind, raw)
    if exception is None:
        assert worker == schema, f"worker {'accepts' if worker else 'rejects'}, schema {'accepts' if schema else 'rejects'}"
    else:  # what JSON Schema cannot say: the worker rejects, the schema lets it through
        assert (worker, schema) == (False, True), exception


@pytest.mark.parametrize("kind, label, raw, exception", CORPUS, ids=[f"{c[0]}:{c[1][:60]}" for c in CORPUS])
def test_decode_never_raises_and_messages_stay_short(kind, label, raw, exception):
    result = decode(kind, raw, Limits(), now=NOW, key=b"u-1")
    if isinstance(result, Rejection):
        assert len(result.message) < 600, result.message
    else:
        result.model_dump_json()  # every accepted string can be written out again (no lone surrogate)
    if kind == "ping":  # the fast path takes only what decode takes
        fast = decode_ping_fast(raw, Limits(), NOW, key=b"u-1")
        assert fast is None or not isinstance(result, Rejection)


def test_the_corpus_covers_what_the_issue_names():
    labels = {label for _, label, _, _ in CORPUS}
    for needed in ("deep nesting, arrays", "huge user_id", "lat=NaN", "lon=Infinity", "invalid utf-8",
                   "duplicate keys, last one invalid", "ts='yesterday'"):
        assert needed in labels
    assert sum(1 for _, label, _, _ in CORPUS if "=" in label) > 300  # wrong types in every field


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


IP = jsonschema.Draft202012Validator({"type": "string", "pattern": json.loads(
    (SCHEMAS / "connection-log.schema.json").read_text())["properties"]["ip"]["pattern"]})


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.ip_addresses().map(str), st.ip_addresses(v=6).map(lambda a: a.exploded),
                 st.text(alphabet="0123456789abcdefABCDEF:.%/ x\n", max_size=45)))
def test_the_published_ip_pattern_is_python_ipaddress(text):
    assert IP.is_valid(text) == _ip_ok(text), text


@settings(max_examples=1000, deadline=None)
@given(st.ip_addresses(v=6), st.ip_addresses(v=4))
def test_the_ip_pattern_takes_ipv6_with_an_ipv4_tail(v6, v4):
    text = ":".join(v6.exploded.split(":")[:6]) + ":" + str(v4)
    assert IP.is_valid(text) and IP.is_valid(str(ipaddress.IPv6Address(text))), text
    assert IP_PATTERN.startswith("^")
