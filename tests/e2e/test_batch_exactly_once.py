"""Batches exactly once: finalisation is a compare-and-set, a job cancelled by its id
counts toward its batch, and a cancel is finalised by the control process alone."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

from sqlmodel import select

from broker_config import CONTROL_QUEUE
from llmos_jobs import broker, broker_view
from llmos_jobs.broker import create_app
from llmos_jobs.db.batch_progress import job_finished
from llmos_jobs.db.batch_tables import Batch, StoredFile
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import WebhookDelivery
from llmos_jobs.services import batch_files, batches
from schemas.common import JobKind, JobStatus
from tests.support.batch_lines import request_line
from tests.support.faults import private_stack
from tests.support.stack import Stack
from tests.support.waiting import HANG_GUARD_S, until


def _finished_batch(stack: Stack, *, webhook: str) -> str:
    """A cancelling batch whose jobs have all ended."""
    client = stack.client()
    with session_scope(stack.database) as session:
        batch = Batch(tenant=client.tenant, endpoint=batch_files.ENDPOINT, input_file_id="none",
                      completion_window="24h", priority=8, total=2, status="cancelling",
                      cancelling_at=utcnow(), webhook_url=webhook)
        session.add(batch)
        session.flush()
        for i in range(2):
            session.add(Job(tenant=client.tenant, kind=JobKind.generate, priority=8,
                            model="echo", batch_id=batch.id, custom_id=f"c{i}", payload={},
                            queue="lang.echo", status=JobStatus.cancelled))
        return batch.id


def test_finalisation_happens_once_however_many_try(stack: Stack) -> None:
    batch_id = _finished_batch(stack, webhook="http://127.0.0.1:9/hook")
    # Two jobs end at once: one of them moves the batch to `finalizing`.
    with session_scope(stack.database) as session:
        assert [job_finished(session, batch_id), job_finished(session, batch_id)] == [True, False]
    start = threading.Barrier(4)
    submitter = stack.client().submitter

    def finalize() -> None:
        start.wait()
        batches.finalize(submitter, batch_id)

    threads = [threading.Thread(target=finalize) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD_S)
    batches.finalize(submitter, batch_id)  # and once more, late
    with session_scope(stack.database) as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None and batch.status == "cancelled"
        files = [f.id for f in session.exec(select(StoredFile)).all()
                 if f.filename.startswith(batch_id)]
        assert files == [batch.error_file_id]
        # Every delivery in the stack's database: other tests' rows too, some of them
        # written by hand with a payload of their own (test_retention's has no "data").
        events = [r.event_type for r in session.exec(select(WebhookDelivery)).all()
                  if r.payload.get("data", {}).get("id") == batch_id]
    assert events == ["batch.cancelled"]


def _batch_in(stack: Stack, tenant: str, batch_id: str, status: str) -> Batch:
    def reached() -> Batch | None:
        with session_scope(stack.database) as session:
            row = batches.get_batch(session, tenant, batch_id)
        return row if row.status == status else None

    return until(reached, f"batch {batch_id} became {status}", poll_s=0.1)


def test_a_batch_job_cancelled_by_its_id_counts_toward_the_batch(stack: Stack) -> None:
    client = stack.client()
    model = f"idle-{uuid.uuid4().hex[:6]}"  # registered, served by no worker: jobs wait
    client.register_model(model, stack.data_dir / model, engine="noop")
    lines = "\n".join(request_line(f"c{i}", model) for i in range(2))
    uploaded = client.upload_file(filename="in.jsonl", purpose="batch",
                              content=lines.encode())
    batch = client.create_batch(input_file_id=uploaded.id)
    def expanded() -> list[Job] | None:
        with session_scope(stack.database) as session:
            jobs = list(session.exec(select(Job).where(Job.batch_id == batch.id)).all())
        return jobs if len(jobs) == 2 else None

    jobs = until(expanded, "the batch was expanded into its 2 jobs")
    for job in jobs:
        assert client.cancel(job.id).status == JobStatus.cancelled
    row = _batch_in(stack, client.tenant, batch.id, "completed")
    assert row.output_file_id is None and row.error_file_id is not None
    with session_scope(stack.database) as session:
        errors = batch_files.get_file(session, client.tenant, row.error_file_id).content
    assert sorted(json.loads(line)["error"]["code"] for line in errors.splitlines()) == [
        "job_cancelled", "job_cancelled"]


def test_a_cancel_only_marks_the_batch_and_the_control_process_finalises_it(
        tmp_path: Path) -> None:
    """The caller of a cancel (the API process) writes no file: it marks the batch and
    sends its finalisation to the control process, through the one publish path."""
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        client = stack.client()
        model = "idle"  # served by no worker: the requests wait
        client.register_model(model, stack.data_dir / model, engine="noop")
        uploaded = client.upload_file(filename="in.jsonl", purpose="batch",
            content="\n".join(request_line(f"c{i}", model) for i in range(3)).encode())
        batch = client.create_batch(input_file_id=uploaded.id)
        # No control process yet: the batch is never expanded, and its cancel cannot be
        # finalised by anyone but one that starts later.
        assert client.cancel_batch(batch.id).status == "cancelling"
        with session_scope(stack.database) as session:
            row = batches.get_batch(session, client.tenant, batch.id)
            files = session.exec(select(StoredFile).where(
                StoredFile.tenant == client.tenant)).all()
        assert (row.status, row.output_file_id, row.error_file_id) == ("cancelling", None, None)
        assert [f.id for f in files] == [uploaded.id]
        held = broker_view.message_ids(create_app(stack.broker_url), [CONTROL_QUEUE])
        assert held is not None and broker.finalization_id(batch.id) in held
        stack.start_control()
        row = _batch_in(stack, client.tenant, batch.id, "cancelled")
        # Never expanded: no request ran, and none is in the (absent) files.
        assert (row.output_file_id, row.error_file_id) == (None, None)
        with session_scope(stack.database) as session:
            assert session.exec(select(Job).where(Job.batch_id == batch.id)).all() == []
