"""Faust tables read and written around Faust's per-event path (same bytes, same partitions)."""
from __future__ import annotations

import orjson


def peek(table, key: str):
    """table.get(key), read from the memory store's dict: ~0.05 µs instead of ~1.4 µs through the Table."""
    return table.data.data.get(key)


def write_at(table, partition: int, key: str, value) -> None:
    """table[key] = value, with its changelog record sent to `partition` (not the current event's)."""
    table.data[key] = value
    table.send_changelog(partition, key, value)


def changelog_entry(key: str, value) -> tuple[bytes, bytes | None]:
    """Key and value bytes of a table changelog record, as Faust writes them for our str/json tables."""
    return orjson.dumps(key), None if value is None else orjson.dumps(value)


def delete_at(table, partition: int, key: str) -> None:
    """del table[key], with its tombstone sent to the changelog at `partition`."""
    table.data.pop(key, None)
    table.send_changelog(partition, key, None, value_serializer="raw")
