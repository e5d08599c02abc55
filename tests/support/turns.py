"""Helpers for tests of turn order: turns sent at once from many threads, and the check
that a mindspace holds each of them once, in the order they were accepted."""

from __future__ import annotations

import itertools
import subprocess
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlmodel import select

from llmos_jobs.client import LlmosClient
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job, JobPublic
from schemas.common import JobStatus
from tests.support.stack import Stack
from tests.support.waiting import until


def echo_model(stack: Stack, *, delay_ms: int) -> tuple[LlmosClient, str, dict[str, str]]:
    """A fresh no-op model whose replies echo the turn's message, and the environment of
    the workers that serve it (each request takes ``delay_ms``)."""
    client = stack.client()
    model = f"echo-{uuid.uuid4().hex[:6]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    return client, model, {"LLMOS_NOOP_ECHO": "1", "LLMOS_NOOP_DELAY_MS": str(delay_ms)}


def start_echo_worker(stack: Stack, model: str, env: dict[str, str], label: str
                      ) -> subprocess.Popen[bytes]:
    return stack.start_worker(f"{label}-{stack.name}-{uuid.uuid4().hex[:4]}@test",
                              "--model", model, "--concurrency", "4", env=env)


def messages(count: int) -> list[str]:
    """Messages of different lengths, so each turn's prompt size says which turns it saw."""
    return [f"message {i} " + "word " * (i % 4) for i in range(count)]


def send_at_once(stack: Stack, mindspace_id: str, texts: Sequence[str]) -> list[JobPublic]:
    """Each text sent by a client of its own, all threads released together, as from
    many shells running `llmos mindspace chat` at the same moment."""
    start = threading.Barrier(len(texts))

    def send(text: str) -> JobPublic:
        client = stack.client()
        start.wait()
        return client.chat(mindspace_id, text)

    with ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(send, texts))


def seqs_of(stack: Stack, mindspace_id: str) -> dict[str, int]:
    with session_scope(stack.database) as session:
        rows = session.exec(select(Job).where(Job.mindspace_id == mindspace_id)).all()
        return {job.id: job.mindspace_seq for job in rows if job.mindspace_seq is not None}


def wait_for_status(client: LlmosClient, job_id: str, status: JobStatus) -> JobPublic:
    def reached() -> JobPublic | None:
        job = client.job(job_id)
        assert job.status == status or not job.status.is_final, \
            f"job {job_id} ended {job.status} before {status}"
        return job if job.status == status else None

    return until(reached, f"job {job_id} became {status}")


def in_acceptance_order(stack: Stack, mindspace_id: str, jobs: Sequence[JobPublic]
                        ) -> list[JobPublic]:
    seqs = seqs_of(stack, mindspace_id)
    return sorted(jobs, key=lambda j: seqs[j.id])


def assert_turns_applied_in_order(stack: Stack, client: LlmosClient, mindspace_id: str,
                                  done: Sequence[JobPublic]) -> None:
    """Every turn succeeded, and the history holds each one once, whole, in the order the
    turns were accepted; each reply answers its own message having seen exactly the
    turns before it; and no two turns ran at the same time."""
    assert [j.status for j in done] == [JobStatus.succeeded] * len(done), [
        (j.status, j.error_message) for j in done]
    ordered = in_acceptance_order(stack, mindspace_id, done)
    seqs = seqs_of(stack, mindspace_id)
    assert [seqs[j.id] for j in ordered] == list(range(len(done)))
    sent = [str(j.payload["message"]) for j in ordered]
    history = client.mindspace(mindspace_id).messages
    assert [m.role for m in history] == ["user", "assistant"] * len(done)
    assert [m.content for m in history[0::2]] == sent  # each message once, in order
    assert [" ".join(m.content.split()) for m in history[1::2]] == [
        " ".join(s.split()) for s in sent]  # the echo: each reply answers its own message
    assert [m.job_id for m in history[0::2]] == [j.id for j in ordered]
    assert [m.job_id for m in history[1::2]] == [j.id for j in ordered]
    assert [j.result["reply"] if j.result else None for j in ordered] == [
        history[2 * k + 1].content for k in range(len(ordered))]
    words = [len(s.split()) for s in sent]
    assert [j.usage.prompt_tokens if j.usage else None for j in ordered] == [
        2 * sum(words[:k]) + words[k] for k in range(len(ordered))]
    for before, after in itertools.pairwise(ordered):
        assert before.finished_at is not None and after.started_at is not None
        assert before.finished_at <= after.started_at
