"""Shell tests: the stage modules with Faust's memory tables, no broker, a test secret."""
from __future__ import annotations

import pytest

from streams.rules import rules
from streams.settings import get_settings


@pytest.fixture
def test_rules(monkeypatch):
    """The stages' rules with a test pseudonym secret (no key file is read or written)."""
    monkeypatch.setenv("CROSSPATHS_PSEUDONYM_SECRET", "unit-test-secret")
    get_settings.cache_clear(), rules.cache_clear()
    yield rules()
    monkeypatch.delenv("CROSSPATHS_PSEUDONYM_SECRET")
    get_settings.cache_clear(), rules.cache_clear()
