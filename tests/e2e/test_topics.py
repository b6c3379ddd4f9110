"""On the real broker: `crosspaths topics create` brings existing topics to the declared configs."""
from __future__ import annotations

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from streams.topics import create_topics, topic_specs

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
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs={
            "segment.ms": ("DELETE", None), "max.message.bytes": "2000000"})], incremental=True)
        assert _configs(admin, name)["segment.ms"] == str(7 * 24 * 3600 * 1000)
        lines = create_topics(s)
        assert f"updated  {name} (segment.ms=86400000)" in lines
        assert sum(line.startswith("updated") for line in lines) == 1  # the others already match
        now = _configs(admin, name)
        wanted = {spec.name: spec for spec in topic_specs(s)}["crossings"].configs()
        assert {k: now[k] for k in wanted} == wanted
        assert now["max.message.bytes"] == "2000000"
        assert all(line.startswith("exists") for line in create_topics(s))
    finally:
        admin.close()
