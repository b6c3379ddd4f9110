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
