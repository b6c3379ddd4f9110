"""User-agent generalization to browser family, major version, OS family and device class."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ua_parser import BestAvailableResolver, Parser, load_builtins, load_lazy_builtins

DEVICE_CLASSES = ("mobile", "tablet", "desktop", "bot", "other")
UNKNOWN = "Other"

_MOBILE_OS = frozenset(
    {
        "iOS",
        "Android",
        "Windows Phone",
        "BlackBerry OS",
        "BlackBerry Tablet OS",
        "Symbian OS",
        "Firefox OS",
        "KaiOS",
        "Tizen",
        "HarmonyOS",
        "Sailfish",
        "webOS",
    }
)
_DESKTOP_OS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "SUSE",
        "openSUSE",
        "Mint",
        "Arch Linux",
        "Gentoo",
        "Chrome OS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Solaris",
    }
)
_TABLET_DEVICE_FAMILIES = frozenset({"iPad", "Generic Tablet"})
_TABLET_BRANDS = frozenset({"Generic_Android_Tablet"})
_BOT_DEVICE_FAMILIES = frozenset({"Spider"})


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """Generalized user agent: no version beyond the major, no device model."""

    browser_family: str
    browser_major: str
    os_family: str
    device_class: str


@functools.lru_cache(maxsize=1)
def _parser() -> Parser:
    """Build the parser once, on the fastest resolver installed (Rust, then re2, then pure Python)."""
    resolver = BestAvailableResolver
    matchers = load_builtins() if resolver.__module__.endswith(".basic") else load_lazy_builtins()
    # No resolver-level cache: reduce_user_agent has its own LRU cache on the final result.
    return Parser(resolver(matchers))


def _device_class(device_family: str, device_brand: str, os_family: str) -> str:
    """Map parsed device and OS families to one of DEVICE_CLASSES."""
    if device_family in _BOT_DEVICE_FAMILIES:
        return "bot"
    if (
        device_family in _TABLET_DEVICE_FAMILIES
        or device_brand in _TABLET_BRANDS
        or device_family.startswith("Kindle")
    ):
        return "tablet"
    if os_family in _MOBILE_OS:
        return "mobile"
    if os_family in _DESKTOP_OS or device_family == "Mac":
        return "desktop"
    return "other"


@functools.lru_cache(maxsize=10_000)
def reduce_user_agent(ua: str) -> UserAgentInfo:
    """Generalize a User-Agent header; unknown parts become "Other" (major: "")."""
    if not isinstance(ua, str):
        raise ValueError(f"user_agent={ua!r} is not a string")
    result = _parser().parse(ua.strip())
    browser = result.user_agent
    os_ = result.os
    device = result.device
    os_family = os_.family if os_ is not None else UNKNOWN
    return UserAgentInfo(
        browser_family=browser.family if browser is not None else UNKNOWN,
        browser_major=(browser.major or "") if browser is not None else "",
        os_family=os_family,
        device_class=_device_class(
            device.family if device is not None else "",
            (device.brand or "") if device is not None else "",
            os_family,
        ),
    )
