"""Settings: the crossing defaults are CrossingParams', declared once."""
from __future__ import annotations

import dataclasses
import os

from geo.crossings import CrossingParams
from streams.settings import Settings


def test_crossing_defaults_are_crossing_params_defaults(monkeypatch):
    for name in list(os.environ):
        if name.startswith("CROSSPATHS_CROSSING_"):
            monkeypatch.delenv(name)
    settings, defaults = Settings(), CrossingParams()
    fields = {f.name for f in dataclasses.fields(CrossingParams)} - {"partition_cell_m"}  # not a setting
    for name in fields:
        assert getattr(settings, f"crossing_{name}") == getattr(defaults, name), name
    assert settings.crossing_params() == defaults


def test_the_worker_refuses_a_dp_delta_above_the_bound(tmp_path):
    import pytest

    from streams.rules import Rules

    secret = tmp_path / "key"
    secret.write_bytes(os.urandom(32))
    ok = Rules.from_settings(Settings(dp_epsilon=1.0, pseudonym_secret_file=secret, home=tmp_path))
    assert (ok.dp.epsilon, ok.dp.delta, ok.dp.max_cells_per_user, ok.dp.resolution) == (1.0, 1e-6, 4, 7)
    with pytest.raises(ValueError, match=r"delta=0.001 must be in \(0, 1e-06\]"):
        Rules.from_settings(Settings(dp_epsilon=1.0, dp_delta=1e-3, pseudonym_secret_file=secret, home=tmp_path))
