"""The webhook SSRF checker (llmos_jobs/services/webhooks/ssrf.py) and the pinned delivery:
every IPv6 form of an internal IPv4 address is refused, a name is resolved once and
connected to at the address that was checked, and the tenant sees only a status and a
fixed reason."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.webhooks.delivery import post
from llmos_jobs.services.webhooks.ssrf import check_destination, resolve, why_internal
from llmos_jobs.settings import Settings
from tests.support.webhook_receiver import Receiver

INTERNAL_V4 = [ipaddress.IPv4Network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "100.64.0.0/10", "0.0.0.0/8", "198.18.0.0/15", "240.0.0.0/4")]


def addresses_in(network: ipaddress.IPv4Network) -> st.SearchStrategy[ipaddress.IPv4Address]:
    return st.integers(0, network.num_addresses - 1).map(lambda i: network[i])


internal_v4 = st.sampled_from(INTERNAL_V4).flatmap(addresses_in)
public_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(
    lambda a: a.is_global and not a.is_multicast)
low_bits = st.integers(0, 2**80 - 1)


def mapped(v4: ipaddress.IPv4Address, _: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0xFFFF << 32) | int(v4))


def sixtofour(v4: ipaddress.IPv4Address, low: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | low)


def nat64(v4: ipaddress.IPv4Address, _: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4))


def teredo(v4: ipaddress.IPv4Address, low: int) -> ipaddress.IPv6Address:
    # 2001:0000:<server>:<flags>:<port>:<client, inverted>
    server = int(ipaddress.IPv4Address("65.54.227.120"))
    return ipaddress.IPv6Address((0x20010000 << 96) | (server << 64) | ((low & 0xFFFFFFFF) << 32)
                                 | (int(v4) ^ 0xFFFFFFFF))


def compatible(v4: ipaddress.IPv4Address, _: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(v4))


FORMS = [mapped, sixtofour, nat64, teredo, compatible]


@given(internal_v4, st.sampled_from(FORMS), low_bits)
def test_every_ipv6_form_of_an_internal_ipv4_address_is_refused(
        v4: ipaddress.IPv4Address, form: Any, low: int) -> None:
    assert why_internal(v4) is not None
    embedded = form(v4, low)
    assert why_internal(embedded) is not None, (str(v4), str(embedded))
    with pytest.raises(InvalidRequest, match="public hosts only"):
        check_destination(f"http://[{embedded}]:8080/hook")


@given(public_v4, st.sampled_from([mapped, sixtofour, nat64]), low_bits)
def test_public_addresses_and_their_ipv6_forms_pass(v4: ipaddress.IPv4Address, form: Any,
                                                    low: int) -> None:
    assert why_internal(v4) is None
    assert why_internal(form(v4, low)) is None, str(form(v4, low))


def test_the_known_forms_of_loopback_and_metadata_are_named() -> None:
    for literal, kind in [("2002:7f00:1::", "6to4 loopback"),
                          ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
                          ("::ffff:10.0.0.1", "IPv4-mapped private"),
                          ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo client loopback"),
                          ("64:ff9b:1::8.8.8.8", "NAT64 local-use"),
                          ("::1", "loopback"), ("fe80::1", "link-local")]:
        assert why_internal(ipaddress.ip_address(literal)) == kind, literal


@given(st.text(max_size=80))
def test_any_text_is_either_a_destination_or_an_invalid_request(text: str) -> None:
    public = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))]
    with mock.patch("socket.getaddrinfo", return_value=public):
        for url in (text, f"http://{text}/", f"https://h/{text}"):
            with contextlib.suppress(InvalidRequest):
                check_destination(url)


def answers(*addresses: str) -> Any:
    """A getaddrinfo that answers ``addresses[i]`` to its i-th call (then the last)."""
    calls: list[str] = []

    def getaddrinfo(host: str, port: int, *_: Any, **__: Any) -> list[Any]:
        address = addresses[min(len(calls), len(addresses) - 1)]
        calls.append(host)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    getaddrinfo.calls = calls  # type: ignore[attr-defined]
    return getaddrinfo


def test_every_answer_of_a_name_is_checked() -> None:
    both = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]
    with mock.patch("socket.getaddrinfo", return_value=both), \
            pytest.raises(InvalidRequest, match="resolves to a loopback address;"):
        check_destination("http://rebind.test/hook")


def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    lookup = answers("93.184.216.34", "127.0.0.1")  # public to the check, then internal
    with mock.patch("socket.getaddrinfo", lookup):
        destination = resolve("https://rebind.test:8443/hook?x=1")
    assert str(destination.address) == "93.184.216.34" and lookup.calls == ["rebind.test"]
    assert destination.connect_url == "https://93.184.216.34:8443/hook?x=1"
    assert destination.host_header == "rebind.test:8443"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(secret="whsec_" + "A" * 32, script=[(500, {"x-internal": "secret"})])
    yield server.start()
    server.stop()


def test_a_pinned_delivery_resolves_once_and_sends_the_name(receiver: Receiver) -> None:
    port = int(receiver.url.split(":")[2].split("/")[0])
    settings = Settings(webhook_allowed_hosts=f"hook.test:{port}", webhook_timeout_s=10)
    lookup = answers("127.0.0.1", "10.9.9.9")  # a second lookup would go nowhere
    with mock.patch("socket.getaddrinfo", lookup):
        first = post(f"http://hook.test:{port}/hooks", "{}", {}, settings)
    assert lookup.calls == ["hook.test"]  # one lookup per attempt, connected to its answer
    # The receiver's answer is reduced to its status: no body, no headers.
    assert (first.status_code, first.error) == (500, "HTTP 500")
    [one] = receiver.wait_for(1)
    assert one.headers["host"] == f"hook.test:{port}"


def test_tls_goes_to_the_address_with_the_name_as_server_name() -> None:
    sent: list[httpx.Request] = []

    async def send(self: httpx.AsyncClient, request: httpx.Request, **_: Any) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204, request=request)

    with mock.patch("socket.getaddrinfo", answers("93.184.216.34")), \
            mock.patch.object(httpx.AsyncClient, "send", send):
        result = post("https://hooks.example.com/in", "{}", {}, Settings())
    assert result.status_code == 204
    [request] = sent
    assert request.url.host == "93.184.216.34" and request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


def test_a_refused_or_failed_attempt_names_no_address() -> None:
    with mock.patch("socket.getaddrinfo", answers("10.1.2.3")):
        refused = post("http://inside.test/hook", "{}", {}, Settings())
    assert refused.error == "refused: the destination is not a public host"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: the connection is refused
        failed = post(f"http://127.0.0.1:{port}/", "{}", {},
                      Settings(webhook_allowed_hosts=f"127.0.0.1:{port}"))
    assert failed.status_code is None and failed.error == "connection failed"


def test_the_whole_attempt_has_one_deadline() -> None:
    """A receiver dripping its answer a byte at a time, each byte well within the
    per-read timeout, is cut off at the attempt's deadline."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10_000:
                if stop.wait(0.1):
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=drip, daemon=True).start()
    try:
        started = time.monotonic()
        result = post(f"http://127.0.0.1:{port}/", "{}", {},
                      Settings(webhook_allowed_hosts=f"127.0.0.1:{port}", webhook_timeout_s=1))
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        server.close()
    assert result.status_code is None and result.error == "timeout: no answer within 1 s"
    assert elapsed < 20  # the drip alone would take 1,000 s
