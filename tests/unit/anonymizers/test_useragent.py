import pytest

from anonymizers import useragent
from anonymizers.useragent import DEVICE_CLASSES, UserAgentInfo, reduce_user_agent

CHROME_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
FIREFOX_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0"
SAFARI_IOS = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
SAFARI_IPAD = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1"
SAFARI_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"
CHROME_ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36"
CHROME_ANDROID_TABLET = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
)
EDGE = CHROME_WIN + " Edg/124.0.2478.80"


@pytest.mark.parametrize(
    "ua, expected",
    [
        (CHROME_WIN, UserAgentInfo("Chrome", "124", "Windows", "desktop")),
        (FIREFOX_LINUX, UserAgentInfo("Firefox", "125", "Ubuntu", "desktop")),
        (FIREFOX_WIN, UserAgentInfo("Firefox", "126", "Windows", "desktop")),
        (SAFARI_IOS, UserAgentInfo("Mobile Safari", "17", "iOS", "mobile")),
        (SAFARI_IPAD, UserAgentInfo("Mobile Safari", "16", "iOS", "tablet")),
        (SAFARI_MAC, UserAgentInfo("Safari", "17", "Mac OS X", "desktop")),
        (CHROME_ANDROID, UserAgentInfo("Chrome Mobile", "124", "Android", "mobile")),
        (CHROME_ANDROID_TABLET, UserAgentInfo("Chrome", "124", "Android", "tablet")),
        (GOOGLEBOT, UserAgentInfo("Googlebot", "2", "Other", "bot")),
        (GOOGLEBOT_SMARTPHONE, UserAgentInfo("Googlebot", "2", "Android", "bot")),
        (EDGE, UserAgentInfo("Edge", "124", "Windows", "desktop")),
        ("curl/8.5.0", UserAgentInfo("curl", "8", "Other", "other")),
        ("", UserAgentInfo("Other", "", "Other", "other")),
        ("zzzz garbage", UserAgentInfo("Other", "", "Other", "other")),
    ],
)
def test_reduce_user_agent(ua, expected):
    info = reduce_user_agent(ua)
    assert info == expected
    assert info.device_class in DEVICE_CLASSES


def test_result_is_frozen_and_cached():
    info = reduce_user_agent(CHROME_WIN)
    with pytest.raises(AttributeError):
        info.browser_family = "x"  # type: ignore[misc]
    before = reduce_user_agent.cache_info().hits
    assert reduce_user_agent(CHROME_WIN) is info
    assert reduce_user_agent.cache_info().hits == before + 1
    assert reduce_user_agent.cache_info().maxsize == 10_000


def test_uses_fastest_resolver():
    pytest.importorskip("ua_parser_rs")
    resolver = useragent._parser().resolver
    assert type(resolver).__module__ == "ua_parser.regex"


def test_non_string_rejected():
    with pytest.raises(ValueError, match="user_agent=None"):
        reduce_user_agent(None)  # type: ignore[arg-type]
