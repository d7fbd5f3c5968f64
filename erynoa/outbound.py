"""The one guard for HTTP requests to addresses a user chooses (notification webhooks).

A user-supplied URL must never reach this deployment's own network: loopback, private,
link-local (cloud metadata at 169.254.169.254), carrier-grade NAT, multicast, reserved and
unspecified addresses are refused, also when written as IPv4-mapped, NAT64 or 6to4 IPv6, as a
decimal or octal number, or behind a DNS name; so are ports other than 80 and 443. Operators
widen it with ``ERYNOA_OUTBOUND_ALLOW`` (addresses or networks, optionally ``:port``, e.g.
``127.0.0.1`` for tests) and ``ERYNOA_OUTBOUND_PORTS``.

Two places use it: the API validates a ``webhook_url`` when a user sets it (``check_url``), and
every request is checked again when it is sent (``GuardedTransport``), because DNS answers
change. The transport resolves the name once, checks every address, and connects to the
checked one (the URL is rewritten to the address; the ``Host`` header and TLS SNI keep the
name, so certificates are still verified against it): a DNS answer that changes between the
check and the connection (rebinding) has nothing left to redirect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

if TYPE_CHECKING:
    from erynoa.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[Address]]]

STANDARD_PORTS = frozenset({80, 443})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class OutboundRefused(Exception):
    """The destination is not one this system may send to; ``reason`` is safe to show the user
    (it names the kind of address, never the address a name resolved to)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutboundUnresolved(OSError):
    """The host name has no address now (which may change: retry later)."""


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[Network, str], ...]:
    return tuple((ipaddress.ip_network(net), kind) for net, kind in pairs)


# Special-purpose ranges (IANA registries), each with the kind the refusal names.
_BLOCKED_V4 = _nets(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # cloud metadata services live here
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),
    ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # broadcast included
)
_BLOCKED_V6 = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "reserved"),  # IPv4-compatible, deprecated
    ("64:ff9b:1::/48", "reserved"),  # local-use NAT64
    ("100::/64", "reserved"),
    ("2001::/23", "reserved"),  # Teredo and other protocol assignments
    ("2001:db8::/32", "reserved"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "private"),  # site-local, deprecated
    ("ff00::/8", "multicast"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, NAT64, 6to4), which is where it leads."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def forbidden_kind(address: Address) -> str | None:
    """Why ``address`` is not a public destination ("loopback", "private", ...), or None."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return forbidden_kind(inner)
    table = _BLOCKED_V4 if isinstance(address, ipaddress.IPv4Address) else _BLOCKED_V6
    for network, kind in table:
        if address in network:
            return kind
    # Anything else the registries do not call globally reachable.
    return None if address.is_global else "reserved"


@dataclass(frozen=True)
class AllowRule:
    """An operator's exception: these addresses, on this port (any port when None)."""

    network: Network
    port: int | None = None

    def admits(self, address: Address, port: int) -> bool:
        return address in self.network and (self.port is None or self.port == port)


def parse_allow_rule(entry: str) -> AllowRule:
    """``127.0.0.1``, ``10.1.0.0/16``, ``127.0.0.1:8080``, ``::1``, ``[::1]:8080``."""
    text = entry.strip()
    port: int | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{entry!r}: expected [address]:port")
            port = int(rest[1:])
        text = host
    elif text.count(":") == 1:
        text, port_text = text.split(":")
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{entry!r}: port out of range")
    return AllowRule(ipaddress.ip_network(text, strict=False), port)


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def system_resolver(host: str, port: int) -> list[Address]:
    """Every address the system resolver gives for ``host`` (inet_aton forms such as
    ``2130706433`` or ``0177.0.0.1`` come back as the address they mean)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundUnresolved(f"cannot resolve {host}: {exc}") from exc
    found: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise OutboundUnresolved(f"cannot resolve {host}: no address")
    return found


def _host_of(raw: str) -> str:
    host = raw.strip("[]").rstrip(".").lower()
    if not host:
        raise OutboundRefused("has no host")
    return host


@dataclass(frozen=True)
class OutboundPolicy:
    """What user-chosen requests may reach; the default allows public addresses on 80/443."""

    allow: tuple[AllowRule, ...] = ()
    ports: frozenset[int] = STANDARD_PORTS
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, resolver: Resolver = system_resolver
    ) -> OutboundPolicy:
        return cls(
            allow=tuple(parse_allow_rule(e) for e in settings.outbound_allow),
            ports=frozenset(settings.outbound_ports),
            resolver=resolver,
        )

    def check_address(self, address: Address, port: int) -> None:
        """``OutboundRefused`` unless a request to ``address``:``port`` is allowed."""
        candidates: Iterable[Address] = (address, *filter(None, [embedded_ipv4(address)]))
        if any(rule.admits(a, port) for rule in self.allow for a in candidates):
            return
        kind = forbidden_kind(address)
        if kind is not None:
            raise OutboundRefused(f"points to a {kind} address")
        if port not in self.ports:
            raise OutboundRefused(f"uses port {port}; allowed: {sorted(self.ports)}")

    async def resolve(self, host: str, port: int) -> list[Address]:
        """The checked addresses of ``host``: every one must be allowed, or none is used (a
        name answering with one public and one internal address is refused, not filtered)."""
        host = _host_of(host)
        if port not in self.ports and not any(r.port in (None, port) for r in self.allow):
            # Refused before resolving: a name that does not resolve yet is not let through.
            raise OutboundRefused(f"uses port {port}; allowed: {sorted(self.ports)}")
        literal = _literal(host)
        addresses = [literal] if literal is not None else await self.resolver(host, port)
        for address in addresses:
            self.check_address(address, port)
        return addresses

    async def check_url(self, url: str, *, timeout_s: float = 5.0) -> None:
        """Validate a URL a user registers. A name that does not resolve now is accepted: it
        can only be used once it resolves, and every send is checked again then."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise OutboundRefused("must use http or https")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise OutboundRefused("has an invalid port") from exc
        try:
            await asyncio.wait_for(self.resolve(parts.hostname or "", port), timeout_s)
        except (OutboundUnresolved, TimeoutError):
            return


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request only to an address its policy allows,
    connecting to the address it checked. ``OutboundRefused`` propagates (nothing was sent);
    a name that does not resolve is an ``httpx.ConnectError`` like any unreachable host."""

    def __init__(self, policy: OutboundPolicy, inner: httpx.AsyncBaseTransport | None = None):
        self.policy = policy
        # No keep-alive: a pooled connection is keyed by address, and reusing one opened
        # (and TLS-verified) for one name to send another name's request would skip a check.
        self.inner = inner or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0), trust_env=False
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _DEFAULT_PORTS:
            raise OutboundRefused("must use http or https")
        host = _host_of(url.raw_host.decode("ascii"))
        port = url.port or _DEFAULT_PORTS[url.scheme]
        try:
            addresses = await self.policy.resolve(host, port)
        except OutboundUnresolved as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        # The Host header was set from the original URL when the request was built.
        request.url = url.copy_with(host=str(addresses[0]))
        if url.scheme == "https" and _literal(host) is None:
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def guarded_client(
    policy: OutboundPolicy,
    *,
    timeout_s: float,
    inner: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every request goes through the guard; redirects are not
    followed (a 3xx is the answer) and no proxy from the environment is used."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, inner),
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,
    )
