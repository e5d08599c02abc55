"""Fault injection for tests: a TCP proxy between the application and PostgreSQL that a
test can cut (every open connection dropped, new ones refused) and restore, and a
private stack (its own Redis server, its own PostgreSQL database through the proxy)
that a fault test may break without disturbing the session's stacks."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmos_jobs import broker_view
from tests.support.services import drop_pg_database, fresh_pg_database, private_redis
from tests.support.stack import Stack


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` drops every open connection
    and refuses new ones until ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self.refused = 0  # connections refused while cut
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        with self._lock:
            for s in sockets:
                self._open.discard(s)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            sockets = list(self._open)
        self._drop(*sockets)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


def proxied(url: str, proxy: CuttableProxy) -> str:
    """``url`` (postgresql+psycopg://user@127.0.0.1:5432/db) through ``proxy``."""
    host_port = f"{proxy.target[0]}:{proxy.target[1]}"
    assert host_port in url, url
    return url.replace(host_port, f"127.0.0.1:{proxy.port}")


@contextmanager
def private_stack(data_dir: Path, database_url: str) -> Iterator[Stack]:
    """A stack on a Redis server of its own (which the test may flush or restart)."""
    with private_redis() as redis_url:
        stack = Stack(name="private", broker_url=f"{redis_url}/0", database_url=database_url,
                      data_dir=data_dir)
        try:
            yield stack
        finally:
            stack.stop()


@contextmanager
def private_pg_stack(postgres_admin: str, data_dir: Path) -> Iterator[Stack]:
    """A private stack on a PostgreSQL database of its own, dropped afterwards."""
    database_url = fresh_pg_database(postgres_admin)
    try:
        with private_stack(data_dir, database_url) as stack:
            yield stack
    finally:
        drop_pg_database(postgres_admin, database_url)


@dataclass(frozen=True)
class Execution:
    prompt: str
    at: float  # time.time() as the engine started computing it
    pid: int


def executions(log: Path) -> list[Execution]:
    """What the no-op engine computed, from its log (LLMOS_NOOP_LOG): one entry per
    request each time an engine started it, whatever the database says."""
    if not log.exists():
        return []
    return [Execution(**json.loads(line)) for line in log.read_text().splitlines()]


def runs_per_prompt(log: Path) -> Counter[str]:
    return Counter(e.prompt for e in executions(log))


def strand_in_unacked(stack: Stack, queue: str, delivered_ago_s: float) -> str:
    """Do to the one message waiting in ``queue`` what kombu's Redis transport does on
    delivery, with no consumer to acknowledge it or give it back: it leaves its list for
    the `unacked` hash, indexed as delivered ``delivered_ago_s`` ago. What a worker or
    control process killed while it held the message leaves behind. Its id."""
    redis = stack.redis()
    [key] = [k for k in redis.keys(f"{queue}*") if redis.llen(k)]
    raw = redis.rpop(key)
    assert raw is not None
    message = json.loads(raw)
    tag = uuid.uuid4().hex
    redis.hset(broker_view.UNACKED_KEY, tag, json.dumps([message, "", queue]))
    redis.zadd(broker_view.UNACKED_INDEX_KEY, {tag: time.time() - delivered_ago_s})
    return str(message["headers"]["id"])
