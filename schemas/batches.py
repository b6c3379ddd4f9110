"""Columnar batches: the format of the pipeline's internal topics (crossing-cells, crossing-pairs, stats-*).

One Kafka message carries many records column by column, as a JSON object of equal-length lists
({"k": keys, "o": offsets, field: values, ...}) plus fields shared by all its records ("src": the
input topic and partition they came from). A batch that would exceed `max_bytes` once encoded is
split into several messages, each a valid batch, so that no message ever reaches the broker's
limit (1 MiB by default), however many records one fetch brings or however they cluster on one
partition key.
"""
from __future__ import annotations

import orjson

MAX_BATCH_BYTES = 512 * 1024  # well under Kafka's default message.max.bytes (1 MiB)


def encode_batches(columns: dict[str, list], shared: dict[str, object] | None = None,
                   max_bytes: int = MAX_BATCH_BYTES) -> list[bytes]:
    """Encode a batch as one or more messages of at most max_bytes, each with the `shared` fields.

    A single record larger than max_bytes still goes out on its own (it cannot be split); input
    records are capped well below that (settings.max_message_bytes).
    """
    data = orjson.dumps({**columns, **(shared or {})})
    n = batch_length(columns)
    if len(data) <= max_bytes or n <= 1:
        return [data]
    half = n // 2
    return (encode_batches({k: v[:half] for k, v in columns.items()}, shared, max_bytes)
            + encode_batches({k: v[half:] for k, v in columns.items()}, shared, max_bytes))


def batch_length(columns: dict[str, list]) -> int:
    """Number of records of a batch (the length of its columns; ValueError if they differ)."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"batch columns of different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0
