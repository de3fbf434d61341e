"""The egress policy: which destinations a session may reach, decided without any I/O.

DESIGN section 3 ("Egress") fixes the rules; :func:`decide` implements them for one request:

* ``limited`` networking reaches only the grant's ``allowed_hosts``; ``unrestricted`` reaches any public
  destination. Any other mode is refused (fail closed).
* An ``allowed_hosts`` entry is ``host``, ``*.domain`` (any subdomain of ``domain``, never ``domain``
  itself) or either followed by ``:port``; an entry without a port matches every port. Hosts compare
  case-insensitively, without a trailing dot, in their IDNA (punycode) form; IP literals compare by
  address (``[::1]`` and ``::1`` are the same entry). A malformed entry matches nothing.
* Every address the host resolved to must pass, and the caller connects to :attr:`EgressDecision.address`
  (one of the checked ones) and to nothing else, so a name rebinding to 127.0.0.1 between the check and the
  connect is not possible.
* A non-public address (loopback, private, link-local, CGNAT, unique-local, cloud metadata, reserved) passes
  only when an entry names the host *exactly*: never through a wildcard, never under ``unrestricted``
  alone. Multicast and unspecified addresses never pass.

Malformed input (a bad host, port, address or grant) gives a refusal with a reason, never an exception.
:func:`normalize_host`, :func:`parse_rule` and :func:`split_authority` raise :class:`~openma.errors.InvalidInput`
for callers that validate input up front.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Final, Literal

import attrs

from openma.errors import InvalidInput
from openma.ports.egress import EgressGrant

AddressKind = Literal[
    "public",
    "loopback",
    "private",
    "link_local",
    "cgnat",
    "unique_local",
    "metadata",
    "multicast",
    "unspecified",
    "reserved",
]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS over IPv6, Alibaba).
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR: Final = ipaddress.ip_network("2002::/16")
#: RFC 1918 (the everyday "private" ranges; ``ipaddress.is_private`` also counts documentation and reserved).
_PRIVATE: Final = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_LABEL: Final = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL: Final = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
MAX_HOST_LEN: Final = 253
#: Address kinds that no allow-list entry can open: no TCP destination lives there.
NEVER: Final = frozenset({"multicast", "unspecified"})


@attrs.frozen
class EgressDecision:
    """The outcome of :func:`decide`: ``allowed``, a short ``reason`` (safe to show the sandbox, never a
    secret) and, when allowed, the checked ``address`` to connect to."""

    allowed: bool
    reason: str
    address: str | None = None


@attrs.frozen
class HostRule:
    """One parsed ``allowed_hosts`` entry: ``host`` (normalised; for a wildcard the domain after ``*.``),
    ``wildcard`` and ``port`` (``None``: any port)."""

    host: str
    wildcard: bool = False
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        """Whether this entry covers ``host:port`` (``host`` already normalised)."""
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normalize_host(host: str) -> str:
    """The canonical form of a host: lower case, no trailing dot, IDNA-encoded; an IP literal (IPv6 with or
    without brackets) in its compressed form. ``InvalidInput`` for anything that is not a host name."""
    if not isinstance(host, str):
        raise InvalidInput("host must be a string", field="host")
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        address = _ip(text[1:-1])
        if address is None or address.version != 6:
            raise InvalidInput("bracketed host must be an IPv6 address", field="host")
        return address.compressed
    address = _ip(text)
    if address is not None:
        return address.compressed
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > MAX_HOST_LEN * 2:
        raise InvalidInput("host is empty or too long", field="host")
    try:
        text = text.encode("idna").decode("ascii").lower() if not text.isascii() else text.lower()
    except UnicodeError:
        raise InvalidInput("host is not a valid international domain name", field="host") from None
    labels = text.split(".")
    if len(text) > MAX_HOST_LEN or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput("host is not a valid DNS name", field="host")
    if _NUMERIC_LABEL.match(labels[-1]):
        # "127.1", "0x7f.1", "2130706433": resolvers read these as IPv4 addresses; refuse the ambiguity.
        raise InvalidInput("host looks like a non-canonical IPv4 address", field="host")
    return text


def _port(value: str | int) -> int:
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 5:  # "²".isdigit(), but int() refuses it
            raise InvalidInput("port must be a number from 1 to 65535", field="port")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidInput("port must be a number from 1 to 65535", field="port")
    return value


def split_authority(authority: str, default_port: int | None = None) -> tuple[str, int]:
    """``host[:port]`` (IPv6 in brackets) as ``(normalised host, port)``; ``InvalidInput`` when malformed or
    when the port is missing and there is no ``default_port``."""
    if not isinstance(authority, str) or not authority or any(c in authority for c in "/@?# \t\r\n\\"):
        raise InvalidInput("authority must be host[:port]", field="authority")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise InvalidInput("unterminated IPv6 literal", field="authority")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidInput("authority must be host[:port]", field="authority")
        port_text: str | None = rest[1:] if rest else None
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    elif ":" in authority:
        raise InvalidInput("an IPv6 address needs brackets in host:port", field="authority")
    else:
        host, port_text = authority, None
    if port_text is None:
        if default_port is None:
            raise InvalidInput("authority must name a port", field="authority")
        return normalize_host(host), default_port
    return normalize_host(host), _port(port_text)


def parse_rule(entry: str) -> HostRule:
    """One ``allowed_hosts`` entry as a :class:`HostRule`; ``InvalidInput`` when malformed."""
    if not isinstance(entry, str):
        raise InvalidInput("allowed_hosts entries must be strings", field="allowed_hosts")
    text = entry.strip()
    wildcard = text.startswith("*.")
    port: int | None
    if wildcard:
        text = text[2:]
    if _ip(text) is not None or (text.startswith("[") and text.endswith("]")) or ":" not in text:
        host, port = normalize_host(text), None  # a bare IP literal (IPv6 included) names no port
    else:
        host, port = split_authority(text)
    if wildcard and _ip(host) is not None:
        raise InvalidInput("a wildcard entry needs a domain, not an address", field="allowed_hosts")
    return HostRule(host=host, wildcard=wildcard, port=port)


def parse_rules(entries: Iterable[str]) -> tuple[HostRule, ...]:
    """The well-formed entries of ``allowed_hosts`` (a malformed one matches nothing, so it is dropped)."""
    rules = []
    for entry in entries:
        try:
            rules.append(parse_rule(entry))
        except InvalidInput:
            continue
    return tuple(rules)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _SIX_TO_FOUR:
        packed = address.packed
        return ipaddress.IPv4Address(packed[12:16] if address in _NAT64 else packed[2:6])
    return None


def classify(address: str | IPAddress) -> AddressKind:
    """The kind of an IP address (an IPv6 zone id is ignored); ``InvalidInput`` when it is not one.

    IPv4-mapped (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::/96``) and 6to4 (``2002::/16``) addresses are
    classified by the IPv4 address they carry."""
    if isinstance(address, str):
        parsed = _ip(address.split("%", 1)[0].strip("[]"))
        if parsed is None:
            raise InvalidInput("not an IP address", field="address")
    else:
        parsed = address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.scope_id:
            parsed = ipaddress.IPv6Address(parsed.packed)
        inner = _embedded_v4(parsed)
        if inner is not None:
            return classify(inner)
    if parsed in METADATA_ADDRESSES:
        return "metadata"
    if parsed.is_unspecified:
        return "unspecified"
    if parsed.is_loopback:
        return "loopback"
    if parsed.is_multicast:
        return "multicast"
    if parsed.is_link_local:
        return "link_local"
    if isinstance(parsed, ipaddress.IPv4Address) and parsed in _CGNAT:
        return "cgnat"
    if isinstance(parsed, ipaddress.IPv6Address) and parsed in ipaddress.IPv6Network("fc00::/7"):
        return "unique_local"
    if any(parsed in network for network in _PRIVATE):
        return "private"
    if not parsed.is_global or parsed.is_reserved:
        return "reserved"
    return "public"


def _refuse(reason: str) -> EgressDecision:
    return EgressDecision(allowed=False, reason=reason)


def _admit(grant: EgressGrant, host: str, port: int) -> EgressDecision | tuple[str, int, bool, bool]:
    """A refusal, or ``(name, port, matched, exact)`` for a host the grant's rules admit before resolving."""
    try:
        name = normalize_host(host)
        number = _port(port)
    except InvalidInput as error:
        return _refuse(f"malformed destination: {error.message}")
    networking = getattr(grant, "networking", None)
    if networking not in ("limited", "unrestricted"):
        return _refuse("unknown networking mode")
    try:
        rules = parse_rules(grant.allowed_hosts)
    except TypeError:
        return _refuse("malformed allowed_hosts")
    matching = [rule for rule in rules if rule.matches(name, number)]
    if networking == "limited" and not matching:
        return _refuse(f"{name}:{number} is not on the allowed hosts")
    return name, number, bool(matching), any(not rule.wildcard for rule in matching)


def precheck(grant: EgressGrant, host: str, port: int) -> EgressDecision:
    """The part of :func:`decide` that needs no addresses: a refusal, or ``allowed`` with no address (the
    host must still be resolved and passed to :func:`decide`). A proxy calls it first, so a host off the
    list is never even looked up in DNS. Never raises."""
    admitted = _admit(grant, host, port)
    if isinstance(admitted, EgressDecision):
        return admitted
    return EgressDecision(allowed=True, reason="admitted by the host rules; the addresses decide")


def decide(grant: EgressGrant, host: str, port: int, addresses: Sequence[str]) -> EgressDecision:
    """Whether ``grant``'s session may reach ``host:port``, which resolved to ``addresses``.

    For an IP-literal ``host`` the literal is the only address (``addresses`` is ignored). Never raises:
    anything malformed is a refusal whose ``reason`` says why."""
    admitted = _admit(grant, host, port)
    if isinstance(admitted, EgressDecision):
        return admitted
    name, _port_number, matched, exact = admitted
    literal = _ip(name)
    candidates: Sequence[str] = (name,) if literal is not None else addresses
    if isinstance(candidates, str) or not candidates:
        return _refuse(f"{name} did not resolve to any address")
    checked: list[str] = []
    for candidate in candidates:
        try:
            kind = classify(candidate)
        except (InvalidInput, TypeError, AttributeError):
            return _refuse(f"{name} resolved to a malformed address")
        if kind in NEVER:
            return _refuse(f"{name} resolves to a {kind} address")
        if kind != "public" and not exact:
            return _refuse(f"{name} resolves to a {kind} address; only an exact allowed_hosts entry opens it")
        checked.append(candidate)
    how = "exact entry" if exact else ("wildcard entry" if matched else "unrestricted networking")
    return EgressDecision(allowed=True, reason=f"allowed by {how}", address=checked[0])


__all__ = [
    "METADATA_ADDRESSES",
    "AddressKind",
    "EgressDecision",
    "HostRule",
    "classify",
    "decide",
    "normalize_host",
    "parse_rule",
    "parse_rules",
    "precheck",
    "split_authority",
]
