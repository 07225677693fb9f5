"""The address policy: which addresses are internal, in every spelling, and the exceptions."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.egress.addresses import AddressPolicy, IPAddress, forbidden_reason

INTERNAL_V4 = [
    ("0.0.0.0", "unspecified"),
    ("10.1.2.3", "private"),
    ("100.64.0.1", "shared address space"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.8", "special purpose"),
    ("192.0.2.1", "documentation"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("224.0.0.251", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
]
INTERNAL_V6 = [
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("::ffff:127.0.0.1", "loopback (IPv4-mapped)"),
    ("::ffff:169.254.169.254", "link-local (IPv4-mapped)"),
    ("::ffff:10.0.0.1", "private (IPv4-mapped)"),
    ("64:ff9b::7f00:1", "loopback (NAT64)"),
    ("64:ff9b::a9fe:a9fe", "link-local (NAT64)"),
    ("64:ff9b:1::1", "local NAT64"),
    ("2002:7f00:1::1", "loopback (6to4)"),
    ("2002:c0a8:101::1", "private (6to4)"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo tunnel"),
    ("2001:db8::1", "documentation"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("100::1", "discard-only"),
    ("4000::1", "reserved"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450::1"]
PUBLIC += ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "reason"), INTERNAL_V4 + INTERNAL_V6)
def test_internal_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


@given(ipv4)
def test_ipv4_inside_ipv6_is_judged_as_the_ipv4_address(address: ipaddress.IPv4Address) -> None:
    verdict = forbidden_reason(address) is None
    mapped = ipaddress.IPv6Address(0xFFFF << 32 | int(address))
    nat64 = ipaddress.IPv6Address(0x64FF9B << 96 | int(address))
    sixtofour = ipaddress.IPv6Address(0x2002 << 112 | int(address) << 80 | 1)
    for wrapped in (mapped, nat64, sixtofour):
        assert (forbidden_reason(wrapped) is None) is verdict


@given(ipv4)
def test_ipv4_agrees_with_the_standard_library_where_it_is_settled(
    address: ipaddress.IPv4Address,
) -> None:
    # Everything Python calls private, loopback, link-local, multicast or reserved is refused.
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    ):
        assert forbidden_reason(address) is not None


@given(st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address))
def test_ipv6_outside_global_unicast_is_always_refused(address: ipaddress.IPv6Address) -> None:
    if address.is_loopback or address.is_link_local or address.is_multicast:
        assert forbidden_reason(address) is not None
    if address.is_private and address.ipv4_mapped is None and address.sixtofour is None:
        assert forbidden_reason(address) is not None
    outside = ipaddress.IPv6Network("2000::/3"), ipaddress.IPv6Network("64:ff9b::/96")
    if address.ipv4_mapped is None and not any(address in net for net in outside):
        assert forbidden_reason(address) is not None


def _ips(*texts: str) -> list[IPAddress]:
    return [ipaddress.ip_address(text) for text in texts]


def test_a_name_with_any_internal_address_is_refused() -> None:
    policy = AddressPolicy()
    assert policy.refusal("example.com", _ips("93.184.215.14")) is None
    refusal = policy.refusal("rebind.example", _ips("93.184.215.14", "10.0.0.5"))
    assert refusal == "rebind.example resolves to 10.0.0.5, a private address"
    assert policy.refusal("nowhere.example", []) == "nowhere.example resolved to no address"


def test_allowed_names_suffixes_and_networks() -> None:
    policy = AddressPolicy.from_entries(
        ["Runbooks.Corp", "*.intranet.example", "127.0.0.1", "10.20.0.0/16", "[::1]"]
    )
    assert policy.refusal("runbooks.corp.", _ips("192.168.7.7")) is None
    assert policy.refusal("docs.intranet.example", _ips("10.9.9.9")) is None
    assert policy.refusal("intranet.example", _ips("10.9.9.9")) is not None  # not the apex
    assert policy.refusal("localhost", _ips("127.0.0.1", "::1")) is None
    assert policy.refusal("anything", _ips("10.20.30.40")) is None
    assert policy.refusal("anything", _ips("10.21.0.1")) is not None
    assert policy.refusal("localhost", _ips("127.0.0.2")) is not None


@pytest.mark.parametrize("entry", ["http://runbooks.corp", "a b", "*", "user@host", ""])
def test_entries_that_are_neither_names_nor_networks_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="not a host name, address or network"):
        AddressPolicy.from_entries([entry])
