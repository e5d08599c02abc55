"""Where a webhook may be sent. A job system that POSTs to URLs its tenants choose is a
request forger for anyone who can submit a job, so destinations must be public http(s)
hosts: a URL whose host resolves to a loopback, private, link-local (cloud metadata at
169.254.169.254), multicast, reserved or unspecified address is refused, at submission
and again before every attempt (DNS may have changed in between), unless the operator's
allow-list (LLMOS_WEBHOOK_ALLOWED_HOSTS: host names or host:port) names it."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from llmos_jobs.errors import InvalidRequest

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048


def why_internal(address: IpAddress) -> str | None:
    """The kind of internal address this is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
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
    except OSError as exc:
        raise InvalidRequest(f"webhook: host {host!r} cannot be resolved ({exc})") from None
    # The scope id of a link-local IPv6 answer ("fe80::1%eth0") is not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_destination(url: str, allowed_hosts: Iterable[str] = ()) -> None:
    """Refuse (InvalidRequest naming the host) a URL a webhook must not be sent to."""
    parts = _parse(url)
    host = str(parts.hostname).lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed = frozenset(allowed_hosts)
    if host in allowed or f"{host}:{port}" in allowed:
        return
    for address in _addresses(host, port):
        kind = why_internal(address)
        if kind is not None:
            raise InvalidRequest(
                f"webhook: host {host!r} resolves to {kind} address {address}; webhooks go "
                f"to public hosts only (an operator may allow it in LLMOS_WEBHOOK_ALLOWED_HOSTS)"
            )
