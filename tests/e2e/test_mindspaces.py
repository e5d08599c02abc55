"""Mindspaces: lifecycle, snapshots, forks, destroy, encryption, ordering, isolation,
compaction and cache-affinity routing, against a real worker."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from transformers import AutoTokenizer

from llmos_jobs.client import LlmosClient
from llmos_jobs.db.session import get_engine, session_scope
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.errors import InvalidRequest, NotFound
from llmos_jobs.settings import get_settings
from schemas.common import JobKind, JobStatus
from tests.support.stack import Stack
from tests.support.waiting import until
from workers.engines.base import EngineRequest, EngineSampling
from workers.engines.transformers import TransformersEngine


def _turn(client: LlmosClient, mindspace_id: str, message: str, **kw: object) -> str:
    [job] = client.wait([client.chat(mindspace_id, message, **kw).id])  # type: ignore[arg-type]
    assert job.status == JobStatus.succeeded, job.error_message
    assert job.result is not None
    return str(job.result["reply"])


def _raw_dump(stack: Stack) -> str:
    """Every value of every table, as stored."""
    engine = get_engine(stack.database)
    tables = ["job", "mindspace", "mindspace_message", "mindspace_chunk", "mindspace_snapshot",
              "mindspace_compaction"]
    with engine.connect() as conn:
        return "\n".join(str(row) for t in tables
                         for row in conn.execute(text(f"SELECT * FROM {t}")))


def test_lifecycle_snapshot_restore_and_fork(stack: Stack) -> None:
    client = stack.client()
    space = client.create_mindspace(model="echo", persona="be brief", name="notes",
                                    max_tokens=2)
    assert space.settings.max_tokens == 2
    configured = client.configure_mindspace(space.id, persona="be briefer", temperature=0.5)
    assert configured.persona == "be briefer" and configured.settings.temperature == 0.5
    with pytest.raises(InvalidRequest, match="unknown mindspace setting"):
        client.configure_mindspace(space.id, colour="red")
    assert _turn(client, space.id, "first question") == "ok ok"
    snap = client.snapshot(space.id, name="after one turn")
    assert [s.id for s in client.snapshots(space.id)] == [snap.id]
    _turn(client, space.id, "second question")
    restored = client.restore(snap.id)
    original = client.mindspace(space.id)
    assert restored.id != space.id and len(original.messages) == 4
    assert [(m.role, m.content) for m in restored.messages] == [
        (m.role, m.content) for m in original.messages[:2]]
    assert (restored.persona, restored.settings) == (original.persona, original.settings)
    fork = client.fork(space.id)
    _turn(client, fork.id, "only in the fork")
    _turn(client, space.id, "only in the original")
    in_fork = [m.content for m in client.mindspace(fork.id).messages]
    in_original = [m.content for m in client.mindspace(space.id).messages]
    assert "only in the fork" in in_fork and "only in the fork" not in in_original
    assert "only in the original" in in_original and "only in the original" not in in_fork
    assert in_fork[:4] == in_original[:4]
    assert space.id in {m.id for m in client.mindspaces()}


def test_destroy_leaves_no_text_and_nothing_is_stored_in_plaintext(stack: Stack) -> None:
    client = stack.client()
    marker = f"secret-{uuid.uuid4().hex}"
    space = client.create_mindspace(model="echo", persona=f"persona {marker}")
    _turn(client, space.id, f"message {marker}")
    client.add_knowledge(space.id, f"# Notes\n\nknowledge {marker}", title=f"doc {marker}")
    client.snapshot(space.id)
    dump = _raw_dump(stack)
    assert space.id in dump and marker not in dump  # stored, but only encrypted
    assert marker in client.mindspace(space.id).messages[0].content
    client.destroy_mindspace(space.id)
    with pytest.raises(NotFound):
        client.mindspace(space.id)
    engine = get_engine(stack.database)
    with engine.connect() as conn:
        for table in ("mindspace_message", "mindspace_chunk", "mindspace_snapshot"):
            n = conn.execute(text(f"SELECT count(*) FROM {table} WHERE mindspace_id = :m"),
                             {"m": space.id}).scalar()
            assert n == 0, table
    turns = [j for j in client.jobs(limit=1000) if j.mindspace_id == space.id]
    assert turns and all(j.payload == {"scrubbed": True} and j.result is None for j in turns)
    if stack.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        db_file = stack.database_url.split("///", 1)[1]
        assert marker.encode() not in Path(db_file).read_bytes()


def test_rotation_re_encrypts_under_the_newest_key(stack: Stack) -> None:
    from llmos_jobs.db.rotation import rotate_all

    client = stack.client()
    space = client.create_mindspace(model="echo", persona="rotating")
    _turn(client, space.id, "before rotation")
    old = os.environ["LLMOS_ENCRYPTION_KEYS"]
    new = Fernet.generate_key().decode()
    before = _raw_dump(stack)
    try:
        os.environ["LLMOS_ENCRYPTION_KEYS"] = f"{new},{old}"
        get_settings.cache_clear()
        with session_scope(stack.database) as session:
            counts = rotate_all(session=session)
        assert counts["mindspace_message.content"] >= 2
        os.environ["LLMOS_ENCRYPTION_KEYS"] = new  # the old key is gone
        get_settings.cache_clear()
        # A client reads with the key ring of its Settings: a new one, under the new key.
        shown = stack.client().mindspace(space.id)
        assert shown.messages[0].content == "before rotation"
        assert shown.persona == "rotating"
        assert _raw_dump(stack) != before
    finally:
        # Back under the workers' key (a session reads with the ring of its settings).
        os.environ["LLMOS_ENCRYPTION_KEYS"] = f"{old},{new}"
        get_settings.cache_clear()
        with session_scope(stack.database) as session:
            rotate_all(session=session)
        os.environ["LLMOS_ENCRYPTION_KEYS"] = old
        get_settings.cache_clear()


def test_ten_concurrent_turns_apply_one_at_a_time_in_order(stack: Stack) -> None:
    client = stack.client()
    space = client.create_mindspace(model="echo", max_tokens=1)
    messages = [f"turn {i}" for i in range(10)]
    jobs = [client.chat(space.id, m) for m in messages]  # none waits for the one before
    done = client.wait([j.id for j in jobs])
    assert all(j.status == JobStatus.succeeded for j in done)
    history = client.mindspace(space.id).messages
    assert [m.content for m in history if m.role == "user"] == messages
    assert [m.role for m in history] == ["user", "assistant"] * 10
    # Each turn saw every earlier turn: prompts grow by exactly one turn each time.
    prompts = [j.usage.prompt_tokens for j in done if j.usage]
    assert prompts == [2 + 3 * i for i in range(10)]
    starts = [j.started_at for j in done]
    finishes = [j.finished_at for j in done]
    assert all(f <= s for f, s in zip(finishes, starts[1:], strict=False))  # type: ignore[operator]


def test_another_tenant_cannot_see_or_touch_a_mindspace(stack: Stack) -> None:
    space = stack.client(tenant="owner").create_mindspace(model="echo")
    intruder = stack.client(tenant="intruder")
    for action in (lambda: intruder.mindspace(space.id), lambda: intruder.chat(space.id, "hi"),
                   lambda: intruder.snapshot(space.id), lambda: intruder.fork(space.id),
                   lambda: intruder.destroy_mindspace(space.id),
                   lambda: intruder.knowledge(space.id),
                   lambda: intruder.configure_mindspace(space.id, persona="x")):
        with pytest.raises(NotFound):
            action()
    assert space.id not in {m.id for m in intruder.mindspaces()}


def test_history_over_the_budget_is_compacted_and_recorded(stack: Stack) -> None:
    client = stack.client()
    space = client.create_mindspace(model="echo", context_budget=64, max_tokens=8)
    prompts = []
    for i in range(8):
        [job] = client.wait([client.chat(space.id, f"question number {i} about queues").id])
        assert job.usage is not None
        prompts.append(job.usage.prompt_tokens)
    shown = client.mindspace(space.id)
    compacted = [m for m in shown.messages if m.compacted]
    assert compacted and len(shown.messages) == 16  # kept, but out of the prompt
    assert max(prompts) < 64 + 16  # bounded by the budget, not growing with the history
    from llmos_jobs.db import mindspaces as mindspace_rows

    with session_scope(stack.database) as session:
        records = mindspace_rows.compactions(session=session, tenant="default",
                                             mindspace_id=space.id)
    assert sum(r.messages for r in records) == len(compacted)


def test_turns_stay_on_one_worker_and_fail_over_when_it_dies(stack: Stack) -> None:
    client = stack.client()
    model = f"aff-{uuid.uuid4().hex[:6]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    a = stack.start_worker(f"aff-a-{stack.name}@test", "--model", model, "--concurrency", "2")
    b = stack.start_worker(f"aff-b-{stack.name}@test", "--model", model, "--concurrency", "2")
    try:
        space = client.create_mindspace(model=model, max_tokens=1)
        served = []
        for i in range(4):
            [job] = client.wait([client.chat(space.id, f"turn {i}").id])
            served.append(job.worker)
        assert len(set(served)) == 1 and served[0] is not None
        home = a if served[0].startswith("aff-a") else b
        os.killpg(home.pid, signal.SIGKILL)
        home.wait()
        [after] = client.wait([client.chat(space.id, "after the crash").id])
        assert after.status == JobStatus.succeeded
        assert after.worker is not None and after.worker != served[0]
        assert client.mindspace(space.id).worker == after.worker
        assert len(client.mindspace(space.id).messages) == 10
    finally:
        stack.stop_worker(a)
        stack.stop_worker(b)


def _prefill_ops(client: LlmosClient, mindspace_id: str) -> list[JobPublic]:
    return [j for j in client.jobs(limit=1000) if j.kind == JobKind.model_op
            and j.payload.get("mindspace_id") == mindspace_id]


def test_creation_prefills_the_persona_on_the_worker_holding_the_model(
        stack: Stack, demo_model_dir: Path) -> None:
    """The first turn's prompt begins with the persona prefix, token for token; the
    prefill op computed it into the cache of the worker the turn then runs on, so the
    turn reuses exactly those tokens, and answers as the model does alone."""
    operator = stack.client()
    model = f"warm-{uuid.uuid4().hex[:6]}"
    operator.register_model(model, demo_model_dir)
    name = f"warm-{stack.name}@test"
    worker = stack.start_worker(name, "--model", model, "--concurrency", "2")
    # A tenant of its own: a cache namespace that nothing else has filled.
    client = stack.client(tenant=f"warm-{uuid.uuid4().hex[:6]}")
    persona = "You are a terse archivist of queues, workers and their caches."
    message = "which worker holds the prefix?"
    try:
        # The worker serves the model but does not hold it yet: nothing is sent.
        cold = client.create_mindspace(model=model, persona=persona)
        assert cold.worker is None and _prefill_ops(client, cold.id) == []

        [load] = operator.wait([operator.model_op(model, "load", worker=name).id])
        assert load.status == JobStatus.succeeded, load.error_message
        until(lambda: f"{model}@1" in next(w for w in operator.workers() if w.name == name
                                          ).loaded, f"{name} reported {model}@1 loaded")
        space = client.create_mindspace(model=model, persona=persona)
        assert space.worker == name
        [sent] = _prefill_ops(client, space.id)
        assert sent.queue == f"w.{name}" and persona not in json.dumps(sent.payload)
        [op] = client.wait([sent.id])
        assert op.status == JobStatus.succeeded, op.error_message

        tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
        system = {"role": "system", "content": persona}
        prefix = tokenizer.apply_chat_template([system], tokenize=True, return_dict=True
                                               )["input_ids"]
        prompt = tokenizer.apply_chat_template(
            [system, {"role": "user", "content": message}], add_generation_prompt=True,
            tokenize=True, return_dict=True)["input_ids"]
        assert prompt[:len(prefix)] == prefix and len(prompt) > len(prefix)
        assert op.result is not None and op.result["prefix_tokens"] == len(prefix)

        [turn] = client.wait([client.chat(space.id, message, max_tokens=8).id])
        assert turn.status == JobStatus.succeeded, turn.error_message
        assert turn.worker == name and turn.usage is not None and turn.result is not None
        assert turn.usage.prompt_tokens == len(prompt)
        assert turn.usage.cached_tokens == len(prefix)
        reference = TransformersEngine("reference", str(demo_model_dir))
        try:
            [alone] = reference.generate([EngineRequest(EngineSampling(8), input_ids=prompt)])
        finally:
            reference.unload()
        assert alone.cached_tokens == 0 and turn.result["reply"] == alone.text
    finally:
        stack.stop_worker(worker)
