"""Bytes the worker writes around Faust's own APIs are the bytes Faust itself would write."""
from __future__ import annotations

import pytest

from streams.app import app, pair_table
from streams.plumbing.tables import changelog_entry


@pytest.mark.parametrize("key,value", [("3|alice bob", [1700000000.25, 1764547200.5]), ("0|zoé 李", [12.0, 3600]),
                                       ("11|a b", 1700000000)])
def test_pair_table_changelog_entries_are_what_faust_writes(key, value):
    topic = pair_table.changelog_topic
    k, v = changelog_entry(key, value)
    assert k == topic.prepare_key(key, None)[0]
    assert v == topic.prepare_value(value, None)[0]
    loads = app.serializers
    assert loads.loads_key(topic.key_type, k, serializer=topic.key_serializer) == key
    assert loads.loads_value(topic.value_type, v, serializer=topic.value_serializer) == value
