"""IP address reduction: truncation to network prefixes, never a full address."""

from __future__ import annotations

import ipaddress

IPV4_PREFIX_LEN = 24
IPV6_PREFIX_LEN = 48


def _parse(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an address, unwrapping IPv4-mapped IPv6 to IPv4."""
    if not isinstance(ip, str):
        raise ValueError(f"ip={ip!r} is not a string")
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise ValueError(f"ip={ip!r} is not a valid IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def ip_version(ip: str) -> int:
    """Return 4 or 6 (IPv4-mapped IPv6 counts as 4)."""
    return _parse(ip).version


def truncate_ip(ip: str) -> str:
    """Truncate an address to its /24 (IPv4) or /48 (IPv6) network, in CIDR notation."""
    addr = _parse(ip)
    if addr.version == 4:
        return str(ipaddress.IPv4Network((int(addr), IPV4_PREFIX_LEN), strict=False))
    # Built from the integer so that a zone id ("fe80::1%eth0") is dropped too.
    return str(ipaddress.IPv6Network((int(addr), IPV6_PREFIX_LEN), strict=False))


def partner_ip_prefix(ip: str) -> str | None:
    """Return the /24 of an IPv4 address, or None for IPv6 (never shared with partners)."""
    # A /48 is often a single household or small site: too identifying for third parties.
    addr = _parse(ip)
    if addr.version == 6:
        return None
    return truncate_ip(str(addr))
