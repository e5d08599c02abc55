"""A mindspace's own limits, with a real worker on the demo model: refusals that name the
limit and store nothing, and usage figures equal to what this test counts itself (its
own tokenizer over the history, the bytes it uploaded, the turns' stored usage)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, select
from transformers import AutoTokenizer

from llmos_jobs.client import LlmosClient
from llmos_jobs.db import tenant_policy
from llmos_jobs.db.tables import Job
from llmos_jobs.db.tenant_tables import TenantPolicy
from llmos_jobs.errors import InvalidRequest
from schemas.common import JobStatus
from tests.support.api_server import ApiServer, tenant
from tests.support.cli import llmos
from tests.support.stack import Stack

# The tenant's tokens per minute: enough for the two turns this test sends (each is
# charged its request's bytes / 4 plus its max_tokens, docs/quotas.md).
PER_MINUTE = 1000
PER_TURN = 8
KNOWLEDGE_MAX = 300
# Non-ASCII on purpose: the limit is in UTF-8 bytes, not characters.
FIRST = "# Régles\n\nLes files d'attente à priorité zéro passent d'abord. " * 3
SECOND = "Une autre note, déjà trop longue pour la place qui reste. " * 3


@pytest.fixture
def demo_served(stack: Stack, demo_model_dir: Path) -> Iterator[str]:
    model = f"limited-{uuid.uuid4().hex[:8]}"
    stack.client().register_model(model, demo_model_dir)
    worker = stack.start_worker(f"{model}-{stack.name}@test", "--model", model)
    yield model
    stack.stop_worker(worker)


def _turn_jobs(stack: Stack, mindspace_id: str) -> list[Job]:
    with stack.database.session() as session:
        return list(session.exec(select(Job).where(col(Job.mindspace_id) == mindspace_id)))


def test_limits_are_refused_clearly_and_usage_is_counted(
        stack: Stack, demo_served: str, demo_model_dir: Path) -> None:
    owner = tenant()
    with stack.database.session() as session:
        tenant_policy.put_policy(session=session, policy=TenantPolicy(
            tenant=owner, tokens_per_minute=PER_MINUTE))
    client: LlmosClient = stack.client(owner)
    with pytest.raises(InvalidRequest, match=rf"max_tokens_per_turn {PER_MINUTE + 1} is "
                                             rf"above .*{PER_MINUTE} tokens per minute"):
        client.create_mindspace(model=demo_served, max_tokens_per_turn=PER_MINUTE + 1)
    assert client.mindspaces() == []
    space = client.create_mindspace(model=demo_served, max_tokens_per_turn=PER_TURN,
                                    knowledge_max_bytes=KNOWLEDGE_MAX)
    with pytest.raises(InvalidRequest, match="tokens per minute"):
        client.configure_mindspace(space.id, max_tokens_per_turn=PER_MINUTE + 1)
    assert client.mindspace(space.id).settings.max_tokens_per_turn == PER_TURN

    with pytest.raises(InvalidRequest, match=rf"max_tokens {PER_TURN + 1} is above .*"
                                             rf"max_tokens_per_turn {PER_TURN}"):
        client.chat(space.id, "too long a reply", max_tokens=PER_TURN + 1)
    assert _turn_jobs(stack, space.id) == []
    replies = []
    # The first asks for the limit, the second for nothing: the limit caps the default.
    for message, asked in (("first question", PER_TURN), ("second question", None)):
        [job] = client.wait([client.chat(space.id, message, max_tokens=asked).id])
        assert job.payload["max_tokens"] == PER_TURN
        assert job.status == JobStatus.succeeded, job.error_message
        replies.append(job)

    first = client.add_knowledge(space.id, FIRST, title="regles")
    size = len(FIRST.encode())
    assert size < KNOWLEDGE_MAX < size + len(SECOND.encode())
    with pytest.raises(InvalidRequest) as refused:
        client.add_knowledge(space.id, SECOND, title="note")
    for figure in (f"is {len(SECOND.encode())} bytes", f"holds {size}",
                   f"knowledge_max_bytes {KNOWLEDGE_MAX}"):
        assert figure in str(refused.value)
    assert [d.id for d in client.knowledge(space.id)] == [first.id]

    # What this test counts itself.
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    history = client.mindspace(space.id).messages
    assert not any(m.compacted for m in history)
    tokens = sum(len(tokenizer(m.content)["input_ids"]) for m in history)
    jobs = _turn_jobs(stack, space.id)
    expected = {
        "history_messages": 4, "history_tokens": tokens, "compacted_messages": 0,
        "knowledge_documents": 1, "knowledge_chunks": first.chunks, "knowledge_bytes": size,
        "knowledge_max_bytes": KNOWLEDGE_MAX, "turns": 2,
        "prompt_tokens": sum(j.prompt_tokens or 0 for j in jobs),
        "completion_tokens": sum(j.completion_tokens or 0 for j in jobs),
        "max_tokens_per_turn": PER_TURN, "tenant_tokens_per_minute": PER_MINUTE,
    }
    assert [m.content for m in history[0::2]] == ["first question", "second question"]
    assert expected["prompt_tokens"] > 0 and expected["completion_tokens"] > 0
    assert {j.id for j in jobs} == {j.id for j in replies}
    used = client.mindspace_usage(space.id).model_dump()
    assert {k: used[k] for k in expected} == expected
    out = llmos("--tenant", owner, "mindspace", "show", space.id, "--json", env=stack.env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["id"] == space.id
    assert {k: shown["usage"][k] for k in expected} == expected


def test_limits_over_http(api: ApiServer, stack: Stack) -> None:
    owner = tenant()
    with api.http(api.key(owner)) as http:
        space = http.post("/v1/mindspaces", json={
            "model": "echo", "max_tokens": 2, "max_tokens_per_turn": 3,
            "knowledge_max_bytes": 10}).json()
        assert (space["settings"]["max_tokens_per_turn"],
                space["settings"]["knowledge_max_bytes"]) == (3, 10)
        sid = space["id"]
        turn = http.post(f"/v1/mindspaces/{sid}/turns", json={"message": "hi",
                                                               "max_tokens": 4})
        assert turn.status_code == 400 and "max_tokens_per_turn 3" in turn.text
        doc = http.post(f"/v1/mindspaces/{sid}/knowledge",
                        json={"title": "t", "text": "eleven byte"})
        assert doc.status_code == 400 and "knowledge_max_bytes 10" in doc.text
        lifted = http.patch(f"/v1/mindspaces/{sid}", json={"knowledge_max_bytes": 0}).json()
        assert lifted["settings"]["knowledge_max_bytes"] is None
        assert http.post(f"/v1/mindspaces/{sid}/knowledge",
                         json={"title": "t", "text": "eleven byte"}).status_code == 201
        used = http.get(f"/v1/mindspaces/{sid}/usage").json()
    assert (used["knowledge_bytes"], used["turns"], used["history_messages"]) == (11, 0, 0)
    assert _turn_jobs(stack, sid) == []
