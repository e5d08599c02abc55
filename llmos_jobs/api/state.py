"""What the API's routes share: the settings, the database, one submitter (its caches
serve every tenant) and one LlmosClient per tenant."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request
from sqlmodel import Session

from llmos_jobs.client import LlmosClient
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.services.idempotency import Idempotency
from llmos_jobs.services.submission import Submitter
from llmos_jobs.settings import Settings


class ApiState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database.from_settings(settings)
        self.submitter = Submitter(settings, self.database)
        self.idempotency = Idempotency.of(settings, self.database)
        self._clients: dict[str, LlmosClient] = {}
        self._lock = threading.Lock()

    def client(self, tenant: str) -> LlmosClient:
        with self._lock:
            client = self._clients.get(tenant)
            if client is None:
                # audit=False: the audit middleware records each call, with its key.
                client = LlmosClient(tenant=tenant, settings=self.settings,
                                     submitter=self.submitter, audit=False)
                self._clients[tenant] = client
            return client

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.database) as session:
            yield session


def api_state(request: Request) -> ApiState:
    state = request.app.state.llmos
    if not isinstance(state, ApiState):
        raise RuntimeError("the app was not built by llmos_jobs.api.create_app")
    return state
