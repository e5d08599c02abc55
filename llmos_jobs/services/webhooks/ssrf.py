"""Where a webhook may be sent. A job system that POSTs to URLs its tenants choose is a
request forger for anyone who can submit a job, so destinations must be public http(s)
hosts: a URL whose host resolves to a loopback, private, link-local (cloud metadata at
169.254.169.254), multicast, reserved or unspecified address is refused, at submission
and again before every attempt, unless the operator's allow-list
(LLMOS_WEBHOOK_ALLOWED_HOSTS: host names or host:port) names it.

IPv6 can carry an IPv4 address inside it, and a gateway on the way may unwrap it:
IPv4-mapped (``::ffff:127.0.0.1``), IPv4-compatible (``::127.0.0.1``), 6to4
(``2002:7f00:1::``), NAT64 (``64:ff9b::7f00:1``, and the local-use ``64:ff9b:1::/48``)
and Teredo (``2001::/32``, whose client address is stored inverted). Each embedded
address is judged like the address itself.

A name is resolved once per attempt: ``resolve`` checks every address it answers and
returns the one to connect to, and the delivery connects to that address (with the
name in the Host header and as the TLS server name). So a name that answers a public
address to the check and an internal one a moment later (DNS rebinding) still reaches
only the address that was checked."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from llmos_jobs.errors import InvalidRequest

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the form that carries it."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    if address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found += [("Teredo server", server), ("Teredo client", client)]
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        found.append(("NAT64", low32))
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are IPv6's own
        found.append(("IPv4-compatible", low32))
    return found


def _why_ipv4_or_v6(address: IpAddress) -> str | None:
    for kind, hit in (
        ("loopback", address.is_loopback), ("link-local", address.is_link_local),
        ("multicast", address.is_multicast), ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved), ("private", address.is_private),
        # Shared (carrier-grade NAT) and other special ranges are not public either.
        ("non-global", not address.is_global),
    ):
        if hit:
            return kind
    return None


def why_internal(address: IpAddress) -> str | None:
    """The kind of internal address this is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return "NAT64 local-use"
        for form, inner in embedded_ipv4(address):
            kind = _why_ipv4_or_v6(inner)
            if kind is not None:
                return f"{form} {kind}"
        if address.ipv4_mapped is not None or address in _NAT64:
            return None  # another spelling of a public IPv4 address (judged just above)
    return _why_ipv4_or_v6(address)


def _parse(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"webhook: the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise InvalidRequest(f"webhook: {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"webhook: {url!r} must be an http:// or https:// URL with a host")
    return parts


def _addresses(host: str, port: int) -> list[IpAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"webhook: host {host!r} cannot be resolved ({exc})") from None
    # The scope id of a link-local IPv6 answer ("fe80::1%eth0") is not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


@dataclass(frozen=True)
class Destination:
    """A checked URL and the address to connect to for it."""

    url: str
    host: str  # the name, lower case: the TLS server name
    port: int
    address: IpAddress

    @property
    def host_header(self) -> str:
        parts = urlsplit(self.url)
        default = 443 if parts.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"

    @property
    def connect_url(self) -> str:
        """The URL with its host replaced by the checked address (port, path kept)."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return urlunsplit((parts.scheme, f"{literal}:{self.port}", parts.path or "/",
                           parts.query, ""))


def resolve(url: str, allowed_hosts: Iterable[str] = ()) -> Destination:
    """Check ``url`` and pick the address to connect to; InvalidRequest naming the host
    and the kind of address for a destination a webhook must not be sent to."""
    parts = _parse(url)
    host = str(parts.hostname).lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed = frozenset(allowed_hosts)
    addresses = _addresses(host, port)
    if not addresses:
        raise InvalidRequest(f"webhook: host {host!r} has no address")
    if not (host in allowed or f"{host}:{port}" in allowed):
        for address in addresses:  # every answer: the connection may use any of them
            kind = why_internal(address)
            if kind is not None:
                # The address itself is not named: the answer would map internal names.
                raise InvalidRequest(
                    f"webhook: host {host!r} resolves to a {kind} address; webhooks go to "
                    f"public hosts only (an operator may allow it in "
                    f"LLMOS_WEBHOOK_ALLOWED_HOSTS)")
    return Destination(url=url, host=host, port=port, address=addresses[0])


def check_destination(url: str, allowed_hosts: Iterable[str] = ()) -> None:
    """Refuse (InvalidRequest naming the host) a URL a webhook must not be sent to."""
    resolve(url, allowed_hosts)
