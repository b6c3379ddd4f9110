import dataclasses
import inspect

import pytest

from anonymizers.connection import GROUPABLE_FIELDS, ReducedConnection, group_key, reduce_connection

CHROME_ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36"
FIREFOX_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0"


@pytest.fixture
def reduced():
    return reduce_connection(
        ts=1_700_000_000.5,
        ip="2001:db8:1:2::7",
        user_agent=CHROME_ANDROID,
        isp="  Orange   S.A. ",
        language="fr-FR,fr;q=0.9",
        event="Login",
    )


def test_reduce_connection(reduced):
    assert reduced == ReducedConnection(
        ts=1_700_000_000.5,
        ip_prefix="2001:db8:1::/48",
        ip_version=6,
        isp="orange s.a.",
        browser_family="Chrome Mobile",
        browser_major="124",
        os_family="Android",
        device_class="mobile",
        language="fr",
        event="login",
    )


def test_optional_fields_default():
    r = reduce_connection(ts=0, ip="198.51.100.20", user_agent=FIREFOX_WIN, event="app_open")
    assert (r.isp, r.language, r.ip_prefix, r.ip_version) == ("unknown", "und", "198.51.100.0/24", 4)


def test_no_user_id_anywhere():
    assert "user_id" not in {f.name for f in dataclasses.fields(ReducedConnection)}
    assert "user_id" not in inspect.signature(reduce_connection).parameters
    with pytest.raises(TypeError):
        reduce_connection(ts=0, ip="1.2.3.4", user_agent="", event="login", user_id="alice")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ts=float("nan")), "ts=nan"),
        (dict(ts="2024-01-01"), "ts='2024-01-01'"),
        (dict(ip="999.1.1.1"), "ip='999.1.1.1'"),
        (dict(event=""), "event=''"),
        (dict(event=None), "event=None"),
        (dict(isp=42), "isp=42"),
        (dict(user_agent=7), "user_agent=7"),
    ],
)
def test_reduce_connection_errors(kwargs, message):
    base = dict(ts=0.0, ip="1.2.3.4", user_agent="", event="login")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        reduce_connection(**{**base, **kwargs})


@pytest.mark.parametrize(
    "group_by, expected",
    [
        (("browser_family",), ("Chrome Mobile",)),
        (("os_family", "device_class"), ("Android", "mobile")),
        (("device_class", "os_family"), ("mobile", "Android")),
        (("ip_version", "language", "event"), ("6", "fr", "login")),
        (("isp", "ip_prefix"), ("orange s.a.", "2001:db8:1::/48")),
        (("browser_family", "browser_major"), ("Chrome Mobile", "124")),
    ],
)
def test_group_key(reduced, group_by, expected):
    assert group_key(reduced, group_by) == expected


@pytest.mark.parametrize(
    "group_by, message",
    [
        (("browser",), "'browser'"),
        (("os_family", "user_id"), "'user_id'"),
        (("ts",), "'ts'"),
        ((), r"group_by=\(\)"),
        (("os_family", "os_family"), "twice"),
        ("os_family", "must be a tuple"),
    ],
)
def test_group_key_validation(reduced, group_by, message):
    with pytest.raises(ValueError, match=message):
        group_key(reduced, group_by)


def test_groupable_fields():
    assert "ts" not in GROUPABLE_FIELDS
    assert set(GROUPABLE_FIELDS) == {f.name for f in dataclasses.fields(ReducedConnection)} - {"ts"}
