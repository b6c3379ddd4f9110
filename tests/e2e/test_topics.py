"""On the real broker: `crosspaths topics create` brings existing topics to the declared configs."""
from __future__ import annotations

import time

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from streams.topics import changelog_specs, create_topics, topic_specs

pytestmark = pytest.mark.e2e


def _configs(admin, name: str) -> dict[str, str]:
    got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all")
    return {k: v["value"] for k, v in got["topic"][name].items()}


def test_create_topics_updates_configs_of_existing_topics_and_keeps_other_overrides(pipeline_settings):
    s = pipeline_settings
    assert all(line.startswith("created") for line in create_topics(s))
    name = s.topic("crossings")
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    try:
        # A topic made by an older version (the broker's 7-day segments), with an operator's own override.
        deadline = time.monotonic() + 15
        while True:  # the broker may still be applying the creation's own configs: alter until it shows
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs={
                "segment.ms": ("DELETE", None), "max.message.bytes": "2000000"})], incremental=True)
            if _configs(admin, name)["segment.ms"] == str(7 * 24 * 3600 * 1000) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert _configs(admin, name)["segment.ms"] == str(7 * 24 * 3600 * 1000)
        lines = create_topics(s)
        segment = {spec.name: spec for spec in topic_specs(s)}["crossings"].configs()["segment.ms"]
        assert f"updated  {name} (segment.ms={segment})" in lines
        assert sum(line.startswith("updated") for line in lines) == 1  # the others already match
        now = _configs(admin, name)
        wanted = {spec.name: spec for spec in topic_specs(s)}["crossings"].configs()
        assert {k: now[k] for k in wanted} == wanted
        assert now["max.message.bytes"] == "2000000"
        assert all(line.startswith("exists") for line in create_topics(s))
        # The tables' changelogs exist before any worker, with bounded compaction (Faust would make
        # them with the broker's defaults); personal topics run on the broker's clock.
        for spec in changelog_specs(s):
            got = _configs(admin, spec.name)
            assert {k: got[k] for k in spec.configs()} == spec.configs()
        assert _configs(admin, s.topic("geo-pings"))["message.timestamp.type"] == "LogAppendTime"
    finally:
        admin.close()
