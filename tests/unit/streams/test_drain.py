"""The demo reports only once no stage has lag left (streams.tools.demo.wait_for_drain)."""
from __future__ import annotations

import pytest

from streams.settings import Settings
from streams.tools import demo, kafkaio


@pytest.fixture
def lags(monkeypatch):
    """Feed wait_for_drain a sequence of group lags (the last one repeats); no real sleeping."""
    script: list[dict[str, int]] = []
    asked: list[list[str]] = []

    def group_lag(bootstrap, group, topics):
        asked.append(list(topics))
        return dict(script.pop(0) if len(script) > 1 else script[0])

    monkeypatch.setattr(kafkaio, "group_lag", group_lag)
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    return script, asked


S = Settings(topic_prefix="run.", app_id="crosspaths-run")


def test_waits_until_no_topic_lags_for_a_while(lags):
    script, asked = lags
    script += [{"run.geo-pings": 3, "run.crossing-pairs": 0}, {"run.crossing-pairs": 2}, {}, {"run.stats-cells": 1}, {}]
    assert demo.wait_for_drain(S, timeout_s=60, quiet_s=0.0)
    assert len(asked) == 3  # lag on an internal topic after the inputs are done still counts
    assert set(asked[0]) == {f"run.{t}" for t in demo.PIPELINE_TOPICS}
    assert {"run.crossing-cells", "run.crossing-pairs", "run.erasure-reports"} <= set(asked[0])


def test_says_which_topics_still_lag_when_it_times_out(lags, capsys):
    script, _ = lags
    script.append({"run.crossing-pairs": 7, "run.geo-pings": 0})
    assert not demo.wait_for_drain(S, timeout_s=0.0)
    assert "still behind: crossing-pairs 7" in capsys.readouterr().out
