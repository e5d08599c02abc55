"""A real webhook receiver for the tests: an HTTP server on 127.0.0.1 in a thread that
verifies every request's Standard Webhooks signature and answers from a script."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.services.webhooks.signing import tenant_secret
from tests.support.waiting import HANG_GUARD_S, until


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    verified: bool  # with the receiver's secret at the time


@dataclass
class Receiver:
    secret: str
    # (status, headers) answered to the first requests, in order; then 200.
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    port: int = 0

    def start(self, port: int = 0) -> Receiver:
        """Listen on ``port`` (0: any free one); a stopped receiver may start again on
        its old port (``self.port``), keeping what it received."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver._lock:
                    receiver.received.append(Received(headers, body, time.monotonic(), verified))
                    status, extra = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.port, "the receiver never started"
        return f"http://127.0.0.1:{self.port}/hooks"

    def wait_for(self, count: int, timeout_s: float = HANG_GUARD_S) -> list[Received]:
        """Every request received, once there are at least ``count``."""
        def arrived() -> list[Received] | None:
            with self._lock:
                return list(self.received) if len(self.received) >= count else None

        return until(arrived, f"{count} webhook requests arrived", timeout_s)

    def distinct_events(self) -> set[str]:
        """The events received so far, by their `webhook-id`: a delivery is at least
        once, so one event may arrive more than once."""
        with self._lock:
            return {r.headers["webhook-id"] for r in self.received}

    def wait_for_events(self, count: int, timeout_s: float = HANG_GUARD_S) -> list[Received]:
        """Every request received, once ``count`` distinct events have arrived."""
        def arrived() -> list[Received] | None:
            with self._lock:
                received = list(self.received)
            return received if len({r.headers["webhook-id"] for r in received}) >= count \
                else None

        return until(arrived, f"{count} distinct webhook events arrived", timeout_s)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def tenant_receiver(database: Database, tenant: str) -> Iterator[Receiver]:
    """A receiver that verifies with ``tenant``'s signing secret, running meanwhile."""
    with session_scope(database) as session:
        secret = tenant_secret(session=session, tenant=tenant).secret
    server = Receiver(secret=secret).start()
    try:
        yield server
    finally:
        server.stop()
