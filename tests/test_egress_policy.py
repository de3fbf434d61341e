"""The egress policy (openma/core/egress_policy.py): host rules, address kinds and the decision."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openma.core.egress_policy import (
    EgressDecision,
    HostRule,
    classify,
    decide,
    normalize_host,
    parse_rule,
    parse_rules,
    precheck,
    split_authority,
)
from openma.errors import InvalidInput
from openma.ports.egress import EgressGrant

PUBLIC = "93.184.216.34"


def limited(*hosts: str) -> EgressGrant:
    return EgressGrant(tenant_id="t", session_id="s", networking="limited", allowed_hosts=hosts)


def open_grant(*hosts: str) -> EgressGrant:
    return EgressGrant(tenant_id="t", session_id="s", networking="unrestricted", allowed_hosts=hosts)


# -- hosts and rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("API.GitHub.com", "api.github.com"),
        ("api.github.com.", "api.github.com"),
        (" example.org ", "example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[0:0::1]", "::1"),
        ("[::FFFF:7F00:1]", "::ffff:7f00:1"),
        ("_acme.example.com", "_acme.example.com"),
    ],
)
def test_hosts_are_normalised(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", ".", "a..b", "exa mple.com", "-bad.com", "bad-.com", "a/b", "[127.0.0.1]", "[::1", "127.1", "0x7f.1",
     "2130706433", "x" * 64 + ".com", "a.b.c." * 90, "\uff11\uff12\uff17.\uff10.\uff10.\uff11", "user@host"],
)  # fmt: skip
def test_malformed_hosts_raise_invalid_input(raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalize_host(raw)
    assert caught.value.code == "invalid_input"


@pytest.mark.parametrize(
    ("authority", "default", "expected"),
    [
        ("example.com:443", None, ("example.com", 443)),
        ("Example.COM", 80, ("example.com", 80)),
        ("[::1]:8443", None, ("::1", 8443)),
        ("[::1]", 443, ("::1", 443)),
        ("10.0.0.1:22", None, ("10.0.0.1", 22)),
    ],
)
def test_split_authority(authority: str, default: int | None, expected: tuple[str, int]) -> None:
    assert split_authority(authority, default) == expected


@pytest.mark.parametrize(
    "authority",
    ["example.com", "example.com:0", "example.com:65536", "example.com:-1", "example.com:x", "::1:443", "[::1]x",
     "user@example.com:443", "example.com:443/path", "[::1", ""],
)  # fmt: skip
def test_bad_authorities_raise(authority: str) -> None:
    with pytest.raises(InvalidInput):
        split_authority(authority)


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ("api.github.com", HostRule("api.github.com")),
        ("*.GitHub.com", HostRule("github.com", wildcard=True)),
        ("api.github.com:8443", HostRule("api.github.com", port=8443)),
        ("*.example.com:443", HostRule("example.com", wildcard=True, port=443)),
        ("[::1]:80", HostRule("::1", port=80)),
        ("::1", HostRule("::1")),
        ("[::1]", HostRule("::1")),
        ("169.254.169.254", HostRule("169.254.169.254")),
    ],
)
def test_rules_parse(entry: str, rule: HostRule) -> None:
    assert parse_rule(entry) == rule


@pytest.mark.parametrize("entry", ["*", "*.", "*.10.0.0.1", "*.*.example.com", "a:b", "host:0", "", "http://x.com"])
def test_malformed_rules_raise_and_are_dropped(entry: str) -> None:
    with pytest.raises(InvalidInput):
        parse_rule(entry)
    assert parse_rules([entry, "ok.example"]) == (HostRule("ok.example"),)


def test_wildcards_cover_subdomains_only() -> None:
    rule = parse_rule("*.example.com")
    assert rule.matches("a.example.com", 443)
    assert rule.matches("a.b.example.com", 80)
    assert not rule.matches("example.com", 443)
    assert not rule.matches("badexample.com", 443)
    assert not rule.matches("example.com.evil.net", 443)


def test_ports_narrow_an_entry() -> None:
    assert parse_rule("example.com:443").matches("example.com", 443)
    assert not parse_rule("example.com:443").matches("example.com", 80)
    assert parse_rule("example.com").matches("example.com", 8080)


@pytest.mark.parametrize("port", ["\u00b2", "\u0663", "\uff18\uff10", "1\u00b9"])
def test_a_port_of_non_ascii_digits_is_invalid_input(port: str) -> None:
    # str.isdigit() accepts them; int() refuses some ("²") and reads others ("٣" is 3): neither is a port
    for parse in (lambda: parse_rule(f"example.com:{port}"), lambda: split_authority(f"example.com:{port}")):
        with pytest.raises(InvalidInput, match="port"):
            parse()
    decision = decide(limited("example.com"), "example.com", port, [PUBLIC])
    assert not decision.allowed and decision.address is None


# -- addresses ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        (PUBLIC, "public"),
        ("2606:4700:4700::1111", "public"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.1.1", "link_local"),
        ("fe80::1", "link_local"),
        ("fe80::1%eth0", "link_local"),
        ("100.64.0.1", "cgnat"),
        ("fd12:3456::1", "unique_local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:a9fe:a9fe::1", "metadata"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "reserved"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_addresses_are_classified(address: str, kind: str) -> None:
    assert classify(address) == kind


def test_classify_refuses_non_addresses() -> None:
    with pytest.raises(InvalidInput):
        classify("example.com")


# -- decisions ---------------------------------------------------------------------------------------------


def test_limited_allows_only_listed_hosts() -> None:
    grant = limited("api.example.com", "*.cdn.example.com:443")
    assert decide(grant, "api.example.com", 443, [PUBLIC]) == EgressDecision(True, "allowed by exact entry", PUBLIC)
    assert decide(grant, "x.cdn.example.com", 443, [PUBLIC]).allowed
    assert not decide(grant, "x.cdn.example.com", 80, [PUBLIC]).allowed
    refused = decide(grant, "other.example.com", 443, [PUBLIC])
    assert not refused.allowed and refused.address is None
    assert "not on the allowed hosts" in refused.reason


def test_unrestricted_allows_any_public_destination() -> None:
    decision = decide(open_grant(), "anything.example", 443, [PUBLIC, "2606:4700:4700::1111"])
    assert decision.allowed and decision.address == PUBLIC and "unrestricted" in decision.reason


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.7", "169.254.169.254", "::1", "::ffff:127.0.0.1", "fd00::1"])
def test_non_public_needs_an_exact_entry(address: str) -> None:
    assert not decide(open_grant(), "internal.example", 443, [address]).allowed
    assert not decide(limited("*.example"), "internal.example", 443, [address]).allowed
    assert not decide(open_grant("*.example"), "internal.example", 443, [address]).allowed
    assert decide(limited("internal.example"), "internal.example", 443, [address]).allowed
    assert decide(open_grant("internal.example:443"), "internal.example", 443, [address]).allowed


def test_localhost_and_loopback_literals_need_an_exact_entry() -> None:
    assert not decide(open_grant(), "localhost", 80, ["127.0.0.1"]).allowed
    assert not decide(open_grant(), "127.0.0.1", 80, []).allowed
    assert not decide(open_grant(), "[::1]", 80, []).allowed
    assert decide(limited("127.0.0.1"), "127.0.0.1", 80, []).address == "127.0.0.1"
    assert decide(limited("[::1]:80"), "::1", 80, []).allowed
    # an IP literal is its own address, whatever the caller resolved
    assert not decide(open_grant(), "169.254.169.254", 80, [PUBLIC]).allowed


def test_every_resolved_address_must_pass() -> None:
    """DNS rebinding: one public and one loopback answer is refused as a whole."""
    decision = decide(open_grant(), "rebind.example", 443, [PUBLIC, "127.0.0.1"])
    assert not decision.allowed and "loopback" in decision.reason
    assert not decide(limited("*.example"), "rebind.example", 443, ["169.254.169.254"]).allowed


def test_multicast_and_unspecified_are_never_allowed() -> None:
    assert not decide(limited("zero.example"), "zero.example", 80, ["0.0.0.0"]).allowed
    assert not decide(limited("0.0.0.0"), "0.0.0.0", 80, []).allowed
    assert not decide(limited("mc.example"), "mc.example", 80, ["224.0.0.1"]).allowed


def test_unresolved_and_malformed_inputs_are_refused() -> None:
    assert not decide(open_grant(), "example.com", 443, []).allowed
    assert not decide(open_grant(), "example.com", 443, ["not-an-ip"]).allowed
    assert not decide(open_grant(), "example.com", 0, [PUBLIC]).allowed
    assert not decide(open_grant(), "exa mple.com", 443, [PUBLIC]).allowed
    weird = EgressGrant(tenant_id="t", session_id="s", networking="open", allowed_hosts=())  # type: ignore[arg-type]
    assert decide(weird, "example.com", 443, [PUBLIC]).reason == "unknown networking mode"


def test_host_matching_is_case_and_dot_insensitive() -> None:
    grant = limited("API.Example.COM.")
    assert decide(grant, "api.example.com", 443, [PUBLIC]).allowed
    assert decide(grant, "API.EXAMPLE.COM.", 443, [PUBLIC]).allowed
    assert decide(limited("bücher.example"), "xn--bcher-kva.example", 443, [PUBLIC]).allowed


# -- any input ---------------------------------------------------------------------------------------------

_anything: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=80),
    st.integers(),
    st.none(),
    st.binary(max_size=8),
    st.lists(st.text(max_size=10), max_size=3),
)
_hostish = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"\A[\[\]a-zA-Z0-9.:*%_-]{0,40}\Z"),
    st.ip_addresses().map(str),
)


@settings(max_examples=300, deadline=None)
@given(
    host=st.one_of(_hostish, _anything),
    port=st.one_of(st.integers(-5, 70000), _anything),
    addresses=st.one_of(st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=20), _anything), max_size=4)),
    entries=st.lists(st.one_of(_hostish, _anything), max_size=4),
    networking=st.one_of(st.sampled_from(["limited", "unrestricted"]), _anything),
)
def test_decide_never_raises(host: Any, port: Any, addresses: Any, entries: Any, networking: Any) -> None:
    grant = EgressGrant(tenant_id="t", session_id="s", networking=networking, allowed_hosts=tuple(entries))
    decision = decide(grant, host, port, addresses)
    assert isinstance(decision, EgressDecision) and decision.reason
    if decision.allowed:
        assert decision.address is not None and classify(decision.address) not in ("multicast", "unspecified")
    else:
        assert decision.address is None


@settings(max_examples=200, deadline=None)
@given(address=st.ip_addresses(), name=st.from_regex(r"\A[a-z][a-z0-9]{0,10}\.example\Z"))
def test_non_public_answers_need_an_exact_entry_for_any_address(address: Any, name: str) -> None:
    kind = classify(str(address))
    wildcard = decide(open_grant("*.example"), name, 443, [str(address)])
    assert wildcard.allowed == (kind == "public")
    exact = decide(limited(name), name, 443, [str(address)])
    assert exact.allowed == (kind not in ("multicast", "unspecified"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parsers_raise_only_invalid_input(text: str) -> None:
    for parse in (normalize_host, parse_rule, split_authority, classify):
        try:
            parse(text)
        except InvalidInput:
            pass


def test_precheck_refuses_before_any_lookup() -> None:
    assert not precheck(limited("api.example.com"), "other.example.com", 443).allowed
    assert not precheck(limited("api.example.com"), "bad host", 443).allowed
    admitted = precheck(limited("api.example.com"), "API.example.com", 443)
    assert admitted.allowed and admitted.address is None
    assert precheck(open_grant(), "anything.example", 443).allowed


@settings(max_examples=200, deadline=None)
@given(host=_hostish, port=st.integers(-5, 70000), entries=st.lists(_hostish, max_size=4))
def test_precheck_agrees_with_decide(host: str, port: int, entries: list[str]) -> None:
    grant = limited(*entries)
    if not precheck(grant, host, port).allowed:
        assert not decide(grant, host, port, [PUBLIC]).allowed
