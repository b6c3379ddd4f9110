import pytest

from anonymizers.language import primary_language


@pytest.mark.parametrize(
    "header, expected",
    [
        ("fr-FR,fr;q=0.9,en;q=0.8", "fr"),
        ("en-US", "en"),
        ("EN-gb", "en"),
        ("en_GB", "en"),
        ("de;q=0.5, it;q=0.7", "it"),
        ("en;q=0.5, de", "de"),
        ("zh-Hant-TW;q=0.8, ja;q=0.8", "zh"),
        ("*;q=1, es;q=0.1", "es"),
        ("es;q=0, pt;q=0.2", "pt"),
        ("fil-PH", "fil"),
        ("x-klingon, i-navajo;q=0.9, nl;q=0.1", "nl"),
        ("en;q=abc, fr;q=0.3", "fr"),
        ("en;q=2, fr;q=0.3", "fr"),
        ("en;q=nan, fr;q=0.3", "fr"),
        ("en;q=1e0, fr;q=0.3", "fr"),
        (" da , en-gb;q=0.8", "da"),
        (None, "und"),
        ("", "und"),
        ("*", "und"),
        ("garbage!!", "und"),
        (";;;,,,", "und"),
        ("1234", "und"),
        ("é", "und"),
        ("e", "und"),
        ("en;q=0", "und"),
    ],
)
def test_primary_language(header, expected):
    assert primary_language(header) == expected


def test_huge_header_is_bounded():
    assert primary_language("zz;q=0.1," * 100_000 + "fr") == "zz"
