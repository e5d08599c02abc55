"""Webhook callbacks end to end: the session stack's real worker delivers to a real HTTP
receiver on 127.0.0.1 (allowed through LLMOS_WEBHOOK_ALLOWED_HOSTS, see tests/support/stack.py),
which verifies every Standard Webhooks signature with the `standardwebhooks` library."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlmodel import select
from standardwebhooks import Webhook, WebhookVerificationError

from broker_config import WEBHOOKS_QUEUE, Transport
from llmos_jobs import broker_view
from llmos_jobs.broker import create_app
from llmos_jobs.client import LlmosClient
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookDeliveryPublic
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.webhooks.delivery import list_deliveries
from llmos_jobs.services.webhooks.events import emit
from llmos_jobs.services.webhooks.signing import rotate_secret
from schemas.common import JobStatus
from tests.support.api_server import ApiServer
from tests.support.cli import llmos
from tests.support.stack import WEBHOOK_RETRY_DELAYS, Stack
from tests.support.waiting import HANG_GUARD_S, until
from tests.support.webhook_receiver import Receiver, tenant_receiver

ATTEMPTS = len(WEBHOOK_RETRY_DELAYS.split(",")) + 1
INTERNAL = ["http://127.0.0.1:9/hook", "http://10.0.0.1/hook",
            "http://169.254.169.254/latest/meta-data", "http://localhost:8080/hook"]


@pytest.fixture
def tenant() -> str:
    return f"wh-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(stack: Stack, tenant: str) -> LlmosClient:
    return stack.webhook_client(tenant)


@pytest.fixture
def receiver(stack: Stack, tenant: str) -> Iterator[Receiver]:
    with tenant_receiver(stack.database, tenant) as server:
        yield server


def deliveries(stack: Stack, tenant: str, job_id: str | None = None
               ) -> list[WebhookDeliveryPublic]:
    with session_scope(stack.database) as session:
        return list_deliveries(session=session, tenant=tenant, job_id=job_id)


def settled(stack: Stack, tenant: str, job_id: str | None = None,
            timeout_s: float = HANG_GUARD_S) -> WebhookDeliveryPublic:
    """The one delivery (of the job), once it is no longer pending."""
    def final() -> WebhookDeliveryPublic | None:
        found = deliveries(stack, tenant, job_id)
        if not found or found[0].status == DeliveryStatus.pending:
            return None
        assert len(found) == 1, found
        return found[0]

    return until(final, f"the delivery of {job_id} was no longer pending", timeout_s)


def run_job(client: LlmosClient, receiver: Receiver) -> str:
    job = client.generate(model="echo", prompt="tell the hook", max_tokens=3,
                          webhook=receiver.url)
    [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
    assert done.status == JobStatus.succeeded
    return job.id


def all_attempts_made(stack: Stack, delivery_id: str) -> None:
    """Until the broker holds no message of the delivery, waiting or unacknowledged
    (its id is the delivery's; a retry keeps it): every attempt that will ever be made
    has been made, so what the receiver has is all it will get."""
    if stack.transport is Transport.amqp:
        # RabbitMQ does not show which messages a consumer holds unacknowledged: here the
        # check is still a pause, as before, and only as strong as its length.
        time.sleep(1)
        return
    app = create_app(stack.broker_url)

    def gone() -> bool:
        held = broker_view.message_ids(app, [WEBHOOKS_QUEUE])
        assert held is not None, "the broker's messages are read on Redis only"
        return delivery_id not in held

    until(gone, f"the broker let go of delivery {delivery_id}'s message")


@pytest.mark.brokers
def test_a_succeeded_job_is_announced_once_signed(stack: Stack, tenant: str,
                                                  client: LlmosClient,
                                                  receiver: Receiver) -> None:
    job_id = run_job(client, receiver)
    delivery = settled(stack, tenant, job_id)
    assert delivery.status == DeliveryStatus.delivered and delivery.attempts == 1
    [request] = receiver.wait_for(1)
    assert request.verified
    body = json.loads(request.body)
    assert body["type"] == "job.succeeded" == delivery.event_type
    data = body["data"]
    assert data["id"] == job_id and data["status"] == "succeeded"
    assert data["usage"]["completion_tokens"] == 3 and data["result"]["text"]
    assert "payload" not in data and b"tell the hook" not in request.body  # not the prompt
    assert request.headers["webhook-id"] == delivery.id
    assert request.headers["webhook-signature"].startswith("v1,")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    all_attempts_made(stack, delivery.id)
    assert len(receiver.received) == 1  # delivered: no further attempt
    assert client.job(job_id).webhook_url == receiver.url


@pytest.mark.brokers
def test_a_failing_receiver_gets_the_same_event_until_it_recovers(
        stack: Stack, tenant: str, client: LlmosClient, receiver: Receiver) -> None:
    receiver.script = [(500, {}), (500, {})]
    job_id = run_job(client, receiver)
    delivery = settled(stack, tenant, job_id)
    assert delivery.status == DeliveryStatus.delivered
    requests = receiver.wait_for(3)
    assert len(requests) == 3 and all(r.verified for r in requests)
    assert {r.headers["webhook-id"] for r in requests} == {delivery.id}
    assert {r.body for r in requests} == {requests[0].body}
    assert [a.status_code for a in delivery.attempt_log] == [500, 500, 200]
    assert [a.number for a in delivery.attempt_log] == [1, 2, 3]
    assert delivery.attempts == 3 and delivery.last_status_code == 200


def test_an_exhausted_schedule_fails_the_delivery(
        stack: Stack, tenant: str, client: LlmosClient, receiver: Receiver) -> None:
    receiver.script = [(500, {})] * (ATTEMPTS + 2)
    job_id = run_job(client, receiver)
    delivery = settled(stack, tenant, job_id)
    assert delivery.status == DeliveryStatus.failed
    assert delivery.attempts == ATTEMPTS == len(delivery.attempt_log)
    assert delivery.last_error and "HTTP 500" in delivery.last_error
    all_attempts_made(stack, delivery.id)
    assert len(receiver.received) == ATTEMPTS


def test_retry_after_of_a_429_is_honoured_over_the_schedule(
        stack: Stack, tenant: str, client: LlmosClient, receiver: Receiver) -> None:
    receiver.script = [(429, {"Retry-After": "2"})]
    job_id = run_job(client, receiver)
    first, second = receiver.wait_for(2)
    assert second.at - first.at >= 1.9  # the schedule alone would wait 0.3 s
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert settled(stack, tenant, job_id).status == DeliveryStatus.delivered


def test_410_gone_stops_the_retries(stack: Stack, tenant: str, client: LlmosClient,
                                    receiver: Receiver) -> None:
    receiver.script = [(410, {})]
    job_id = run_job(client, receiver)
    delivery = settled(stack, tenant, job_id)
    assert delivery.status == DeliveryStatus.gone and delivery.attempts == 1
    all_attempts_made(stack, delivery.id)
    assert len(receiver.received) == 1


def test_a_cancelled_job_is_announced(stack: Stack, tenant: str, client: LlmosClient,
                                      receiver: Receiver) -> None:
    idle = f"idle-{uuid.uuid4().hex[:6]}"  # no worker serves it: the job stays queued
    client.register_model(idle, stack.data_dir / idle, engine="noop")
    with pytest.warns(UserWarning):
        job = client.generate(model=idle, prompt="never runs", webhook=receiver.url)
    client.cancel(job.id)
    delivery = settled(stack, tenant, job.id)
    assert delivery.status == DeliveryStatus.delivered
    [request] = receiver.wait_for(1)
    body = json.loads(request.body)
    assert request.verified and body["type"] == "job.cancelled"
    assert body["data"]["id"] == job.id and body["data"]["status"] == "cancelled"


def test_after_rotation_deliveries_verify_with_the_new_secret_only(
        stack: Stack, tenant: str, client: LlmosClient, receiver: Receiver) -> None:
    old = receiver.secret
    run_job(client, receiver)
    [before] = receiver.wait_for(1)
    assert before.verified
    with session_scope(stack.database) as session:
        new = rotate_secret(session=session, tenant=tenant).secret
    assert new != old and new.startswith("whsec_")
    receiver.secret = new
    run_job(client, receiver)
    after = receiver.wait_for(2)[1]
    assert after.verified
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_destinations_are_refused_at_submission(stack: Stack, tenant: str,
                                                         url: str) -> None:
    client = stack.client(tenant)  # no allow-list
    host = url.split("/")[2].split(":")[0]
    with pytest.raises(InvalidRequest, match=f"host '{host}' resolves to"):
        client.generate(model="echo", prompt="p", webhook=url)
    with pytest.raises(InvalidRequest, match="public hosts only"):
        client.generate_many([{"model": "echo", "prompt": "p"}], webhook=url)
    with session_scope(stack.database) as session:
        assert session.exec(select(Job).where(Job.tenant == tenant)).first() is None


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http:///nohost"])
def test_non_http_destinations_are_refused(stack: Stack, tenant: str, url: str) -> None:
    with pytest.raises(InvalidRequest, match="http"):
        stack.client(tenant).generate(model="echo", prompt="p", webhook=url)


def test_delivery_checks_the_destination_again(stack: Stack, tenant: str) -> None:
    # Raised through emit() as other features do, to a loopback host that is not on
    # the workers' allow-list: each attempt is refused before any connection.
    with session_scope(stack.database) as session:
        delivery_id = emit(session=session, tenant=tenant, event_type="batch.completed",
                           url="http://127.0.0.2:9/hook", data={"id": "b1"},
                           settings=stack.settings())
    delivery = settled(stack, tenant)
    assert delivery.id == delivery_id and delivery.event_type == "batch.completed"
    assert delivery.status == DeliveryStatus.failed and delivery.attempts == ATTEMPTS
    assert all(a.status_code is None and a.error and "refused" in a.error
               for a in delivery.attempt_log)


def test_a_rolled_back_event_is_never_sent(stack: Stack, tenant: str,
                                           receiver: Receiver) -> None:
    with pytest.raises(RuntimeError), session_scope(stack.database) as session:
        emit(session=session, tenant=tenant, event_type="batch.completed",
             url=receiver.url, data={}, settings=stack.settings())
        raise RuntimeError("the outcome was not recorded")
    assert deliveries(stack, tenant) == []
    # An event committed after it is published after it: once that one has arrived, the
    # rolled-back one, had it been sent, would be there too.
    with session_scope(stack.database) as session:
        kept = emit(session=session, tenant=tenant, event_type="batch.completed",
                    url=receiver.url, data={"id": "kept"}, settings=stack.settings())
    assert {r.headers["webhook-id"] for r in receiver.wait_for_events(1)} == {kept}
    assert [d.id for d in deliveries(stack, tenant)] == [kept]


def test_the_http_api_takes_a_webhook_and_shows_the_secret(api: ApiServer,
                                                           tenant: str) -> None:
    with api.http(api.key(tenant)) as http:
        refused = http.post("/v1/jobs", json={"model": "echo", "prompt": "p",
                                              "webhook": "http://10.0.0.1/hook"})
        assert refused.status_code == 400 and "10.0.0.1" in refused.json()["error"]["message"]
        shown = http.get("/v1/webhooks/secret").raise_for_status().json()
        assert shown["tenant"] == tenant and shown["secret"].startswith("whsec_")
        assert http.get("/v1/webhooks/secret").json()["secret"] == shown["secret"]
        rotated = http.post("/v1/webhooks/secret/rotate").raise_for_status().json()
        assert rotated["secret"] != shown["secret"]
    with api.http(api.key(tenant, "jobs:read,jobs:write")) as http:
        assert http.get("/v1/webhooks/secret").status_code == 403


def test_the_cli_submits_with_a_webhook_and_lists_deliveries(
        stack: Stack, tenant: str, receiver: Receiver) -> None:
    env = {**stack.env, "LLMOS_TENANT": tenant}
    refused = llmos("submit", "p", "--model", "echo", "--webhook",
                    "http://169.254.169.254/", env=env)
    assert refused.returncode == 1 and "169.254.169.254" in refused.stderr
    secret = json.loads(llmos("webhook", "secret", "--json", env=env).stdout)["secret"]
    assert secret == receiver.secret
    out = llmos("submit", "p", "--model", "echo", "--max-tokens", "2", "--webhook",
                receiver.url, "--wait", "--json", env=env)
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["id"]
    settled(stack, tenant, job_id)
    listed = json.loads(llmos("webhook", "deliveries", "--job", job_id, "--json",
                              env=env).stdout)
    assert [d["job_id"] for d in listed] == [job_id]
    assert listed[0]["status"] == "delivered"
    assert [a["status_code"] for a in listed[0]["attempt_log"]] == [200]
    rotated = llmos("webhook", "rotate", "--json", env=env)
    assert json.loads(rotated.stdout)["secret"] != secret


def test_a_batch_announces_its_end(stack: Stack, tenant: str, client: LlmosClient,
                                   receiver: Receiver) -> None:

    lines = [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "echo", "max_tokens": 1,
                                  "messages": [{"role": "user", "content": "hi"}]}})
             for i in range(3)]
    stored = client.upload_file(filename="b.jsonl", content="\n".join(lines).encode(),
                            purpose="batch")
    batch = client.create_batch(input_file_id=stored.id, webhook=receiver.url)
    [request] = receiver.wait_for(1)
    assert request.verified
    body = json.loads(request.body)
    assert body["type"] == "batch.completed"
    assert body["data"]["id"] == batch.id
    assert body["data"]["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    with pytest.raises(InvalidRequest, match=r"10\.0\.0\.1"):
        client.create_batch(input_file_id=stored.id, webhook="http://10.0.0.1/hook")
