"""The gate: a caller without a valid key is refused before its body is read, a body
over its route's limit is refused with 413 without reading the rest, and denied calls
are audited within a budget per source."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.api_server import ApiServer, tenant
from tests.stack import Stack
from tests.test_api_access import audit

JSON_LIMIT = 4096
UPLOAD_LIMIT = 8192
DENIED_PER_MINUTE = 5


def _small_server(stack: Stack) -> Iterator[ApiServer]:
    server = ApiServer.start(stack, env={
        "LLMOS_API_MAX_BODY_BYTES": str(JSON_LIMIT), "LLMOS_BATCH_MAX_BYTES": str(UPLOAD_LIMIT),
        "LLMOS_AUDIT_DENIED_PER_MINUTE": str(DENIED_PER_MINUTE)})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small(stack: Stack) -> Iterator[ApiServer]:
    """An API server with small body limits and a small denied-audit budget."""
    yield from _small_server(stack)


@pytest.fixture
def fresh(stack: Stack) -> Iterator[ApiServer]:
    """The same, with its denied-audit budget untouched by other tests."""
    yield from _small_server(stack)


def _complete(reply: bytes) -> bool:
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def answer_without_sending_the_body(api: ApiServer, path: str, headers: dict[str, str],
                                    declared: int) -> tuple[int, bytes]:
    """Declare a body of ``declared`` bytes, send 10 of them, and read the answer: a
    server that waited for the rest would never answer (the socket times out)."""
    url = urlsplit(api.url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}",
             f"Content-Length: {declared}", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall("\r\n".join(lines).encode() + b'{"model": ')
        reply = b""
        while not _complete(reply):
            chunk = conn.recv(65536)
            assert chunk, "connection closed without an answer"
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, reply


def test_no_key_is_refused_before_the_body_is_read(small: ApiServer) -> None:
    status, reply = answer_without_sending_the_body(small, "/v1/files", {}, 5 * 2**20)
    assert status == 401 and b"WWW-Authenticate: Bearer" in reply.replace(b"www-authenticate",
                                                                        b"WWW-Authenticate")
    status, _ = answer_without_sending_the_body(
        small, "/v1/jobs", {"Authorization": "Bearer llmos_" + "x" * 40}, 5 * 2**20)
    assert status == 401
    with small.http() as anonymous:
        bad_json = anonymous.post("/v1/jobs", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 401, bad_json.text


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(small: ApiServer) -> None:
    key = small.key(tenant())
    status, reply = answer_without_sending_the_body(
        small, "/v1/jobs", {"Authorization": f"Bearer {key}"}, JSON_LIMIT + 1)
    assert status == 413 and b"LLMOS_API_MAX_BODY_BYTES" in reply
    status, reply = answer_without_sending_the_body(
        small, "/v1/files", {"Authorization": f"Bearer {key}"}, 10 * UPLOAD_LIMIT)
    assert status == 413 and b"LLMOS_BATCH_MAX_BYTES" in reply


def test_an_undeclared_body_is_cut_off_at_the_limit(small: ApiServer) -> None:
    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"model": "echo", "prompt": "'
        for _ in range(total // 1024):
            yield b"x" * 1024
        yield b'"}'

    with small.http(small.key(tenant())) as http:
        response = http.post("/v1/jobs", content=chunks(2 * JSON_LIMIT),
                             headers={"Content-Type": "application/json"})
        assert response.status_code == 413, response.text
        assert "LLMOS_API_MAX_BODY_BYTES" in response.json()["error"]["message"]
        assert http.get("/v1/jobs").json()["data"] == []
        fits = http.post("/v1/files", files={"file": ("a.jsonl", b"x" * (UPLOAD_LIMIT // 2))},
                         data={"purpose": "batch"})
        assert fits.status_code != 413, fits.text
        over = http.post("/v1/files", files={"file": ("a.jsonl", b"x" * (2 * UPLOAD_LIMIT))},
                         data={"purpose": "batch"})
        assert over.status_code in (400, 413), over.text
        assert "LLMOS_BATCH_MAX_BYTES" in over.json()["error"]["message"]

        def multipart(total: int) -> Iterator[bytes]:
            yield (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                   b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"'
                   b"\r\n\r\n")
            for _ in range(total // 65536):
                yield b"x" * 65536
            yield b"\r\n--b--\r\n"

        streamed = http.post("/v1/files", content=multipart(UPLOAD_LIMIT + 2 * 2**20),
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert streamed.status_code == 413, streamed.text
        assert "LLMOS_BATCH_MAX_BYTES" in streamed.json()["error"]["message"]


def test_denied_calls_are_audited_within_a_budget_per_source(fresh: ApiServer) -> None:
    small = fresh
    probe = uuid.uuid4().hex
    calls = 8 * DENIED_PER_MINUTE
    with small.http() as anonymous:
        for _ in range(calls):
            assert anonymous.get(f"/v1/jobs/{probe}").status_code == 401
    rows = [r for r in audit(small, limit=1000) if r["resource_id"] == probe]
    # One budget per minute: even a slow machine spends at most two windows on these calls.
    assert 1 <= len(rows) <= 2 * DENIED_PER_MINUTE, len(rows)
    assert {(r["action"], r["outcome"], r["status_code"]) for r in rows} == {
        ("jobs.read", "denied", 401)}
    owner = tenant()
    with small.http(small.key(owner)) as http:
        for _ in range(calls):
            assert http.get(f"/v1/jobs/{probe}").status_code == 404
        assert http.post("/v1/jobs", json={"model": "echo", "prompt": "x",
                                           "max_tokens": 1}).status_code == 202
    rows = audit(small, owner, limit=1000)
    assert 1 <= sum(r["outcome"] == "denied" for r in rows) <= 2 * DENIED_PER_MINUTE
    assert [r["action"] for r in rows if r["outcome"] == "ok"] == ["jobs.create"]
