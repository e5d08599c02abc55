"""The compose layout: API, worker and control as separate processes, each with a data
directory of its own, against one PostgreSQL and one Redis, sharing only the key ring
(LLMOS_ENCRYPTION_KEYS). A job goes end to end: accepted by the API (which encrypts its
payload), run by the worker (which decrypts it and encrypts the result), its webhook
signed and delivered by the control process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos_jobs.db.session import session_scope
from llmos_jobs.webhooks.signing import tenant_secret
from tests.api_server import ApiServer, tenant, wait_job
from tests.conftest import _drop_pg_database, _fresh_pg_database
from tests.services import private_redis
from tests.stack import Stack
from tests.turns import HANG_GUARD_S
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow


def test_api_worker_and_control_with_separate_data_directories_run_a_job(
        postgres_admin: str, tmp_path: Path) -> None:
    database_url = _fresh_pg_database(postgres_admin)
    try:
        with private_redis() as redis_url:
            broker = f"{redis_url}/0"
            api_side, worker_side, control_side = (
                Stack(name="compose", broker_url=broker, database_url=database_url,
                      data_dir=tmp_path / part) for part in ("api", "worker", "control"))
            for side in (api_side, worker_side, control_side):
                side.data_dir.mkdir()
            owner = tenant()
            api_side.client().register_model("echo", tmp_path / "echo", engine="noop")
            worker_side.start_worker("compose-worker@test", "--model", "echo")
            control_side.start_control()
            api = ApiServer.start(api_side)
            with session_scope(database_url) as session:
                secret = tenant_secret(session=session, tenant=owner).secret
            receiver = Receiver(secret=secret).start()
            try:
                with api.http(api.key(owner)) as http:
                    response = http.post("/v1/jobs", json={
                        "model": "echo", "prompt": "one two", "max_tokens": 2,
                        "webhook": receiver.url})
                    assert response.status_code == 202, response.text
                    done = wait_job(http, response.json()["id"], timeout_s=HANG_GUARD_S)
                assert done["status"] == "succeeded", done
                assert done["result"]["text"] == "ok ok"
                [event] = receiver.wait_for(1, timeout_s=HANG_GUARD_S)
                assert event.verified
                body = json.loads(event.body)
                assert (body["type"], body["data"]["id"]) == ("job.succeeded", done["id"])
                assert body["data"]["result"]["text"] == "ok ok"
            finally:
                receiver.stop()
                api.stop()
                for side in (api_side, worker_side, control_side):
                    side.stop()
            # No process minted a key of its own: the shared ring was the only one.
            assert not [p for p in tmp_path.rglob("encryption.keys")]
    finally:
        _drop_pg_database(postgres_admin, database_url)
