"""Columnar batches of the internal topics: split to a size limit, nothing lost or reordered."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.batches import MAX_BATCH_BYTES, batch_length, encode_batches


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.text(max_size=300), max_size=200), limit=st.integers(64, 4096))
def test_split_batches_keep_every_record_in_order_within_the_limit(values, limit):
    columns = {"k": [f"key{i}" for i in range(len(values))], "o": list(range(len(values))), "v": values}
    messages = encode_batches(columns, {"src": ["geo-pings", 3]}, limit)
    decoded = [orjson.loads(m) for m in messages]
    for m, body in zip(messages, decoded):
        assert len(m) <= limit or len(body["k"]) == 1  # one record too big for the limit goes alone
        assert body["src"] == ["geo-pings", 3]
    for name in ("k", "o", "v"):
        assert [x for body in decoded for x in body[name]] == columns[name]


def test_a_dense_fetch_is_split_under_the_broker_limit():
    raw = "eyJ1c2VyX2lkIjoi" * 12  # ~190 bytes of base64 per record, as crossing-cells carries
    n = 20_000
    columns = {"k": ["5:7"] * n, "o": list(range(n)), "u": [f"user-{i}" for i in range(n)], "raw": [raw] * n}
    messages = encode_batches(columns, {"src": ["geo-pings", 0]})
    assert len(messages) > 1 and all(len(m) <= MAX_BATCH_BYTES for m in messages)
    assert sum(len(orjson.loads(m)["k"]) for m in messages) == n


def test_uneven_columns_are_refused():
    with pytest.raises(ValueError, match="different lengths"):
        batch_length({"k": [1, 2], "o": [1]})
