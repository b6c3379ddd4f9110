"""Kafka's default partitioner (murmur2 of the key), for many keys at once with numpy.

kafka-python's `murmur2` is pure Python and costs ~10 µs per key; the worker places two crossing
records per reported crossing, so it spent more time hashing keys than building the records.
This computes the same hash for a whole batch: keys are grouped by length and hashed 4 bytes at a
time across the group, in uint32 arithmetic (wrapping like the Java original).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_SEED = 0x9747B28C
_M = np.uint32(0x5BD1E995)


def murmur2_many(keys: Sequence[bytes]) -> np.ndarray:
    """Kafka's murmur2 hash of each key, as uint32 (kafka-python's murmur2 & 0xFFFFFFFF)."""
    out = np.empty(len(keys), dtype=np.uint32)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    for length in np.unique(lengths).tolist():
        idx = np.flatnonzero(lengths == length)
        data = np.frombuffer(b"".join([keys[i] for i in idx.tolist()]), dtype=np.uint8).reshape(idx.size, length)
        h = np.full(idx.size, (_SEED ^ length) & 0xFFFFFFFF, dtype=np.uint32)
        whole = length // 4
        if whole:
            blocks = np.ascontiguousarray(data[:, : 4 * whole]).view("<u4")
            for i in range(whole):
                k = blocks[:, i] * _M
                k ^= k >> np.uint32(24)
                k *= _M
                h *= _M
                h ^= k
        tail = data[:, 4 * whole:].astype(np.uint32)
        extra = length % 4
        if extra >= 3:
            h ^= tail[:, 2] << np.uint32(16)
        if extra >= 2:
            h ^= tail[:, 1] << np.uint32(8)
        if extra >= 1:
            h ^= tail[:, 0]
            h *= _M
        h ^= h >> np.uint32(13)
        h *= _M
        h ^= h >> np.uint32(15)
        out[idx] = h
    return out


def partitions_for(keys: Sequence[bytes], partitions: int) -> list[int]:
    """The partition Kafka's default partitioner gives each (non-null) key among `partitions`."""
    return ((murmur2_many(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int64).tolist()
