"""The vectorized default partitioner agrees with kafka-python's (the reference murmur2)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2

from streams.plumbing.partitioner import murmur2_many, partitions_for


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.binary(max_size=70), max_size=60), n=st.integers(1, 64))
def test_same_hash_and_partition_as_kafka_python(keys, n):
    assert murmur2_many(keys).tolist() == [murmur2(k) & 0xFFFFFFFF for k in keys]
    assert partitions_for(keys, n) == [(murmur2(k) & 0x7FFFFFFF) % n for k in keys]


def test_the_java_clients_test_vectors():
    # Kafka's UtilsTest.testMurmur2 (signed 32-bit results of the Java client)
    vectors = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
               "a-little-bit-longer-string": -1486304829,
               "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107}
    got = murmur2_many([k.encode() for k in vectors]).astype("int64").tolist()
    assert [h - (1 << 32) if h >= 1 << 31 else h for h in got] == list(vectors.values())
    assert partitions_for([], 4) == []
