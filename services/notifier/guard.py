"""Where webhooks may go: public addresses only, unless an operator allows some private ranges.

A tenant-supplied URL is a request the notifier makes from inside the network (SSRF). The URL is checked
when a subscription is saved, and again at every delivery: the name is resolved, every address it resolves
to must be allowed, and the connection goes to the address that was checked (not to a second lookup that
DNS rebinding could answer differently).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

__all__ = ["Address", "Refused", "Target", "TargetPolicy", "canonical", "describe", "parse_networks"]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Named so the error says what the address is, not just "not allowed".
_KINDS: tuple[tuple[str, Network], ...] = tuple(
    (what, ipaddress.ip_network(net)) for what, net in (
        ("the cloud metadata service", "169.254.169.254/32"),
        ("the cloud metadata service", "fd00:ec2::254/128"),
        ("loopback", "127.0.0.0/8"), ("loopback", "::1/128"),
        ("link-local", "169.254.0.0/16"), ("link-local", "fe80::/10"),
        ("private (RFC 1918)", "10.0.0.0/8"), ("private (RFC 1918)", "172.16.0.0/12"),
        ("private (RFC 1918)", "192.168.0.0/16"), ("carrier-grade NAT (RFC 6598)", "100.64.0.0/10"),
        ("unique local (RFC 4193)", "fc00::/7"), ("unspecified", "0.0.0.0/8"), ("unspecified", "::/128"),
        ("multicast", "224.0.0.0/4"), ("multicast", "ff00::/8"),
    )
)


class Refused(ValueError):
    """The target is not allowed; the message says why, in words a tenant can act on."""


def parse_networks(value: str) -> tuple[Network, ...]:
    """'127.0.0.0/8, ::1/128' -> networks; ValueError naming the entry that is not a CIDR."""
    nets = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address range such as 127.0.0.0/8") from None
    return tuple(nets)


def canonical(ip: IP) -> IP:
    """An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is the IPv4 address it maps (10.0.0.1)."""
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip


def describe(ip: IP) -> str:
    """What kind of address this is, e.g. 'private (RFC 1918)'; 'public' for a global address."""
    ip = canonical(ip)
    for what, net in _KINDS:
        if ip.version == net.version and ip in net:
            return what
    return "public" if ip.is_global else "reserved"


@dataclass(frozen=True)
class Address:
    host: str  # as written in the URL
    port: int
    ip: str  # the checked address to connect to


@dataclass(frozen=True)
class Target:
    url: str
    parts: SplitResult

    @property
    def host(self) -> str:
        return self.parts.hostname or ""

    @property
    def port(self) -> int:
        return self.parts.port or (443 if self.parts.scheme == "https" else 80)


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class TargetPolicy:
    def __init__(self, allow_private: Sequence[Network] = (), *, resolver: Resolver | None = None,
                 resolve_timeout: float = 5.0) -> None:
        self.allow_private = tuple(allow_private)
        self.resolver = resolver or _system_resolver
        self.resolve_timeout = resolve_timeout

    @staticmethod
    def parse(url: str) -> Target:
        """The URL's shape: http(s), a host, no credentials, no fragment. Raises Refused."""
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises on a port that is not a number or out of range
        except ValueError as exc:
            raise Refused(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise Refused("must be an http:// or https:// URL")
        if not parts.hostname:
            raise Refused("must name a host")
        if parts.username is not None or parts.password is not None:
            raise Refused("must not carry credentials (user:password@); the signature authenticates the sender")
        if parts.fragment:
            raise Refused("must not have a #fragment")
        return Target(url, parts)

    def _allowed(self, ip: IP) -> bool:
        ip = canonical(ip)
        if describe(ip) == "the cloud metadata service":
            return False  # never, whatever the allowed ranges: it hands out the host's credentials
        if any(ip.version == net.version and ip in net for net in self.allow_private):
            return True
        return describe(ip) == "public"

    async def check(self, url: str) -> Address:
        """Resolve and check every address; the first one is the one to connect to. Raises Refused."""
        target = self.parse(url)
        try:
            literal: IP | None = ipaddress.ip_address(target.host)
        except ValueError:
            literal = None
        if literal is not None:
            ips = [str(literal)]
        else:
            try:
                ips = await asyncio.wait_for(self.resolver(target.host, target.port), self.resolve_timeout)
            except (OSError, TimeoutError) as exc:
                raise Refused(f"{target.host} does not resolve ({type(exc).__name__}: {exc})") from None
            if not ips:
                raise Refused(f"{target.host} does not resolve")
        for text in ips:
            ip = canonical(ipaddress.ip_address(text.split("%", 1)[0]))
            if not self._allowed(ip):
                where = str(ip) if literal is not None else f"{target.host} resolves to {ip}"
                what = describe(ip)
                article = "" if what.startswith("the ") else "an " if what == "unspecified" else "a "
                raise Refused(f"{where}, {article}{what} address; webhooks go to public addresses only"
                              + (" (an operator can allow private ranges with FAPIAO_WEBHOOK_ALLOW_PRIVATE)"
                                 if describe(ip) != "the cloud metadata service" else ""))
        return Address(target.host, target.port, ips[0].split("%", 1)[0])
