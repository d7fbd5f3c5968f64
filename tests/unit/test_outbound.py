"""The outbound guard's address classification, allow rules and policy (no network)."""

from __future__ import annotations

import ipaddress

import pytest

from erynoa.outbound import (
    Address,
    AllowRule,
    OutboundPolicy,
    OutboundRefused,
    OutboundUnresolved,
    forbidden_kind,
    parse_allow_rule,
)
from erynoa.settings import Settings


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("255.255.255.255", "reserved"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "reserved"),
        ("198.18.0.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd00::1", "private"),
        ("fc00::1", "private"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("::127.0.0.1", "reserved"),  # IPv4-compatible
    ],
)
def test_internal_addresses_are_named_by_kind(address: str, kind: str) -> None:
    assert forbidden_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_kind(ipaddress.ip_address(address)) is None


def test_allow_rules_parse_addresses_networks_and_ports() -> None:
    assert parse_allow_rule("127.0.0.1") == AllowRule(ipaddress.ip_network("127.0.0.1/32"))
    assert parse_allow_rule("10.1.0.0/16").network == ipaddress.ip_network("10.1.0.0/16")
    assert parse_allow_rule("127.0.0.1:8080").port == 8080
    assert parse_allow_rule("[::1]:8443") == AllowRule(ipaddress.ip_network("::1/128"), 8443)
    assert parse_allow_rule("::1").port is None
    for bad in ("localhost", "127.0.0.1:0", "[::1]x", "10.0.0.0/33"):
        with pytest.raises(ValueError, match=r"(?i)address|port|network"):
            parse_allow_rule(bad)


def test_the_allow_setting_is_comma_separated_and_checked_at_start() -> None:
    settings = Settings(outbound_allow="127.0.0.1, [::1]:9000", outbound_ports="443,8443")  # type: ignore[arg-type]
    policy = OutboundPolicy.from_settings(settings)
    assert policy.ports == frozenset({443, 8443})
    assert [r.port for r in policy.allow] == [None, 9000]
    with pytest.raises(ValueError, match="outbound_allow"):
        Settings(outbound_allow="internal.example")  # type: ignore[arg-type]


def resolving_to(*addresses: str) -> OutboundPolicy:
    async def resolver(host: str, port: int) -> list[Address]:
        return [ipaddress.ip_address(a) for a in addresses]

    return OutboundPolicy(resolver=resolver)


async def test_a_name_is_refused_when_any_of_its_addresses_is_internal() -> None:
    await resolving_to("93.184.215.14").resolve("hooks.example.com", 443)
    with pytest.raises(OutboundRefused, match="private"):
        await resolving_to("93.184.215.14", "10.0.0.7").resolve("hooks.example.com", 443)


async def test_the_refusal_names_the_kind_never_the_resolved_address() -> None:
    with pytest.raises(OutboundRefused) as caught:
        await resolving_to("10.20.30.40").resolve("intranet.example.com", 443)
    assert "10.20.30.40" not in caught.value.reason


async def test_non_standard_ports_are_refused_unless_allowed() -> None:
    policy = resolving_to("93.184.215.14")
    with pytest.raises(OutboundRefused, match="port 22"):
        await policy.resolve("hooks.example.com", 22)
    widened = OutboundPolicy(ports=frozenset({443, 8443}), resolver=policy.resolver)
    await widened.resolve("hooks.example.com", 8443)


async def test_an_allow_rule_admits_its_addresses_on_its_ports() -> None:
    any_port = OutboundPolicy(allow=(parse_allow_rule("127.0.0.1"),))
    await any_port.resolve("127.0.0.1", 18080)
    await any_port.resolve("::ffff:127.0.0.1", 18080)
    with pytest.raises(OutboundRefused, match="loopback"):
        await any_port.resolve("127.0.0.2", 80)
    one_port = OutboundPolicy(allow=(parse_allow_rule("127.0.0.1:9000"),))
    await one_port.resolve("127.0.0.1", 9000)
    with pytest.raises(OutboundRefused):
        await one_port.resolve("127.0.0.1", 9001)


async def test_a_url_that_does_not_resolve_yet_is_accepted_at_registration() -> None:
    async def nxdomain(host: str, port: int) -> list[Address]:
        raise OutboundUnresolved(host)

    policy = OutboundPolicy(resolver=nxdomain)
    await policy.check_url("https://not-yet.example.com/hooks")
    with pytest.raises(OutboundRefused, match="port 6379"):
        await policy.check_url("https://not-yet.example.com:6379/hooks")
    with pytest.raises(OutboundRefused, match="http or https"):
        await policy.check_url("gopher://not-yet.example.com/")
