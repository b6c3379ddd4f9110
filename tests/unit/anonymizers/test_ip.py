import pytest

from anonymizers.ip import ip_version, partner_ip_prefix, truncate_ip


@pytest.mark.parametrize(
    "ip, prefix, version, partner",
    [
        ("203.0.113.77", "203.0.113.0/24", 4, "203.0.113.0/24"),
        ("203.0.113.0", "203.0.113.0/24", 4, "203.0.113.0/24"),
        ("  10.1.2.255 ", "10.1.2.0/24", 4, "10.1.2.0/24"),
        ("0.0.0.0", "0.0.0.0/24", 4, "0.0.0.0/24"),
        ("255.255.255.255", "255.255.255.0/24", 4, "255.255.255.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::/48", 6, None),
        ("2001:DB8:1::", "2001:db8:1::/48", 6, None),
        ("2001:db8:abcd:ffff::1", "2001:db8:abcd::/48", 6, None),
        ("::1", "::/48", 6, None),
        ("fe80::1%eth0", "fe80::/48", 6, None),
        ("::ffff:192.0.2.9", "192.0.2.0/24", 4, "192.0.2.0/24"),
        ("::ffff:c000:0209", "192.0.2.0/24", 4, "192.0.2.0/24"),
    ],
)
def test_truncate(ip, prefix, version, partner):
    assert truncate_ip(ip) == prefix
    assert ip_version(ip) == version
    assert partner_ip_prefix(ip) == partner


@pytest.mark.parametrize(
    "bad",
    ["", "not-an-ip", "256.1.1.1", "1.2.3", "1.2.3.4/24", "1.2.3.4:80", "[2001:db8::1]", "2001:db8:::1", None, 1234],
)
def test_bad_input_names_value(bad):
    for fn in (truncate_ip, ip_version, partner_ip_prefix):
        with pytest.raises(ValueError, match="ip=" + repr_fragment(bad)):
            fn(bad)


def repr_fragment(value):
    import re

    return re.escape(repr(value))
