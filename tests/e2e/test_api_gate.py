"""The gate: a caller without a valid key is refused before its body is read, a body
over its route's limit is refused with 413 without reading the rest, and denied calls
are audited within a budget per source."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.api_server import ApiServer, audit, tenant
from tests.support.stack import Stack

JSON_LIMIT = 4096
UPLOAD_LIMIT = 8192
DENIED_PER_MINUTE = 5
SMALL_FIELDS = {"LLMOS_LIMIT_PROMPT_BYTES": "64", "LLMOS_LIMIT_MESSAGES": "2",
                "LLMOS_LIMIT_PERSONA_BYTES": "32", "LLMOS_LIMIT_KNOWLEDGE_BYTES": "64",
                "LLMOS_LIMIT_FILENAME_CHARS": "16", "LLMOS_LIMIT_METADATA_KEYS": "1",
                "LLMOS_LIMIT_JSON_DEPTH": "8"}


def _small_server(stack: Stack) -> Iterator[ApiServer]:
    server = ApiServer.start(stack, env={
        "LLMOS_API_MAX_BODY_BYTES": str(JSON_LIMIT), "LLMOS_BATCH_MAX_BYTES": str(UPLOAD_LIMIT),
        "LLMOS_AUDIT_DENIED_PER_MINUTE": str(DENIED_PER_MINUTE), **SMALL_FIELDS})
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


def test_an_undeclared_upload_with_an_idempotency_key_is_cut_off_too(small: ApiServer
                                                                     ) -> None:
    # The idempotency middleware reads the body to hash it: the gate's count still holds.
    def multipart(total: int) -> Iterator[bytes]:
        yield (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
               b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"'
               b"\r\n\r\n")
        for _ in range(total // 65536):
            yield b"x" * 65536
        yield b"\r\n--b--\r\n"

    with small.http(small.key(tenant())) as http:
        streamed = http.post("/v1/files", content=multipart(UPLOAD_LIMIT + 2**20),
                             headers={"Content-Type": "multipart/form-data; boundary=b",
                                      "Idempotency-Key": "upload-1"})
        assert streamed.status_code == 413, streamed.text
        assert "LLMOS_BATCH_MAX_BYTES" in streamed.json()["error"]["message"]
        fits = http.post("/v1/files", files={"file": ("a.jsonl", b'{"a": 1}\n')},
                         data={"purpose": "batch"}, headers={"Idempotency-Key": "upload-1"})
        assert fits.status_code == 200, fits.text  # the refused upload did not hold the key


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


def test_oversized_fields_are_400_naming_the_limit_and_nothing_is_stored(small: ApiServer
                                                                          ) -> None:
    message = {"role": "user", "content": "x"}
    with small.http(small.key(tenant())) as http:
        ms = http.post("/v1/mindspaces", json={"model": "echo"}).json()
        file = http.post("/v1/files", files={"file": ("a.jsonl", b"{}")},
                         data={"purpose": "batch"}).json()
        for path, body, setting in [
            ("/v1/jobs", {"model": "echo", "prompt": "x" * 65}, "LLMOS_LIMIT_PROMPT_BYTES"),
            ("/v1/jobs", {"model": "echo", "messages": [message] * 3}, "LLMOS_LIMIT_MESSAGES"),
            ("/v1/chat/completions", {"model": "echo", "messages": [message] * 3},
             "LLMOS_LIMIT_MESSAGES"),
            ("/v1/jobs", {"model": "echo", "prompt": "x", "max_tokens": 10**6},
             "does not fit the context"),
            ("/v1/jobs", {"model": "echo", "prompt": "x", "stop": [[[[[[[[["x"]]]]]]]]]},
             "LLMOS_LIMIT_JSON_DEPTH"),
            ("/v1/mindspaces", {"model": "echo", "persona": "p" * 33},
             "LLMOS_LIMIT_PERSONA_BYTES"),
            (f"/v1/mindspaces/{ms['id']}/knowledge", {"title": "t", "text": "k" * 65},
             "LLMOS_LIMIT_KNOWLEDGE_BYTES"),
            ("/v1/batches", {"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                             "completion_window": "24h", "metadata": {"a": "1", "b": "2"}},
             "LLMOS_LIMIT_METADATA_KEYS"),
        ]:
            response = http.post(path, json=body)
            assert response.status_code == 400, (path, response.text)
            assert setting in response.json()["error"]["message"], (path, response.text)
        persona = http.patch(f"/v1/mindspaces/{ms['id']}", json={"persona": "p" * 33})
        assert persona.status_code == 400 and "LLMOS_LIMIT_PERSONA_BYTES" in persona.text
        named = http.post("/v1/files", files={"file": ("n" * 17 + ".jsonl", b"{}")},
                          data={"purpose": "batch"})
        assert named.status_code == 400 and "LLMOS_LIMIT_FILENAME_CHARS" in named.text
        assert http.get("/v1/jobs").json()["data"] == []
        assert [m["id"] for m in http.get("/v1/mindspaces").json()["data"]] == [ms["id"]]
        assert http.get(f"/v1/mindspaces/{ms['id']}/knowledge").json()["data"] == []
        assert http.get("/v1/batches").json()["data"] == []
        # Metadata without decrypting the content.
        assert http.get(f"/v1/files/{file['id']}").json()["bytes"] == 2
