"""Helpers for end-to-end tests: run real workers against the real broker, wait on real topics."""
from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

from kafka import KafkaProducer, TopicPartition

from streams import clients

from streams.tools.demo import start_worker, stop_worker
from streams.tools.report import read_counters
from streams.settings import Settings
from streams.topics import create_topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_workers(settings: Settings, count: int = 1):
    """Topics created and `count` worker processes running for `settings`; logs printed on failure."""
    create_topics(settings)
    procs, logs = [], []
    try:
        for i in range(count):
            log = Path(settings.home) / f"worker-{i}.log"
            logs.append(log)
            procs.append(start_worker(settings, free_port(), log))
        wait_group_stable(settings, members=count)
        yield procs
    except BaseException:
        for log in logs:
            if log.exists():
                print(f"---- {log} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        raise
    finally:
        for p in procs:
            stop_worker(p)


def wait_group_stable(settings: Settings, members: int, timeout_s: float = 90) -> None:
    """Wait until the workers' consumer group is Stable with `members` members (rebalance done)."""
    from kafka.errors import KafkaError

    admin = clients.admin_client(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                group = admin.describe_groups([settings.app_id]).get(settings.app_id, {})
            except KafkaError as exc:  # e.g. a fresh broker still creating __consumer_offsets
                if not exc.retriable:
                    raise
                group = {"group_state": f"not answered yet ({type(exc).__name__})"}
            if group.get("group_state") == "Stable" and len(group.get("members", [])) == members:
                time.sleep(1)
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"consumer group {settings.app_id} not stable with {members} members: {group}")
            time.sleep(0.5)
    finally:
        admin.close()


def producer(settings: Settings) -> KafkaProducer:
    return clients.producer(settings, linger_ms=5)


def send_json(prod: KafkaProducer, topic: str, key: str | bytes | None, doc: dict | bytes) -> None:
    value = doc if isinstance(doc, (bytes, type(None))) else json.dumps(doc).encode()
    prod.send(topic, key=key.encode() if isinstance(key, str) else key, value=value)


def wait_received(settings: Settings, expected: dict[str, int], timeout_s: float = 120) -> None:
    """Wait until the workers have counted `expected` messages per input topic (exactly)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counters = read_counters(settings)
        got = {t: counters.topics[t].received for t in expected}
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"workers counted {got}, expected {expected}")
        time.sleep(1)


def consume_all(settings: Settings, name: str, min_count: int = 0, timeout_s: float = 60) -> list:
    """Every record on topic `name` (kafka-python), waiting until at least min_count arrived."""
    topic = settings.topic(name)
    deadline = time.monotonic() + timeout_s
    while True:
        consumer = clients.consumer(settings, group_id=None, enable_auto_commit=False, consumer_timeout_ms=1500)
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:  # metadata not there yet (a fresh client): ask again
            consumer.close()
            if time.monotonic() > deadline:
                return []
            time.sleep(0.5)
            continue
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = list(consumer)
        consumer.close()
        if len(records) >= min_count or time.monotonic() > deadline:
            return records
        time.sleep(1)
