"""Long inputs as job graphs, on the demo model through real worker processes: a
document several times the model's context is summarised chunk by chunk and then from
the joined partial summaries; the result is compared with solo greedy runs of the same
prompts on the engine itself."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from transformers import AutoTokenizer

from llmos_jobs.client import LlmosClient
from llmos_jobs.db import graphs as graph_rows
from llmos_jobs.db.model_tables import ModelVersion
from llmos_jobs.db.tables import GraphProgress, GraphRole, Job, JobPublic, RegisteredModel
from llmos_jobs.demo_model import _WORDS
from llmos_jobs.errors import BrokerUnavailable, NoLiveWorkerWarning
from llmos_jobs.prompt_templates import render_preset
from llmos_jobs.services import graphs
from llmos_jobs.services.submission import Submitter
from schemas.common import JobStatus, Usage
from schemas.filters import BlockRule, Direction, TenantFilters
from schemas.tasks import SUMMARY_BUDGETS, SummariseRequest, SummariseResult
from tests.support.api_server import ApiServer
from tests.support.cli import llmos
from tests.support.services import drop_pg_database
from tests.support.stack import Stack, make_stack
from tests.support.waiting import HANG_GUARD_S, until
from workers.engines.base import EngineRequest, EngineSampling
from workers.engines.transformers import BatchingOptions, TransformersEngine

CONTEXT = 2048  # the demo model's max_position_embeddings (llmos_jobs/demo_model.py)
OVERLAP = 64  # tokens each chunk repeats of the one before (llmos_jobs.services.graphs)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def graph_stack(request: pytest.FixtureRequest, redis_base: str, demo_model_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack per database (PostgreSQL: racing follow-ups really run at once), on Redis
    databases no other test module uses (a stack flushes its own)."""
    backend: str = request.param
    admin = request.getfixturevalue("postgres_admin") if backend == "postgres" else None
    stack = make_stack(backend, redis_base, admin, tmp_path_factory.mktemp(f"graphs-{backend}"),
                       redis_db={"sqlite": 15, "postgres": 9}[backend])
    client = stack.client()
    client.register_model("tiny-graph", demo_model_dir)
    # No worker serves this one: its graph's children wait, and can be cancelled.
    client.register_model("tiny-idle", demo_model_dir)
    # Registered with twice the context the model has: chunk prompts it cannot serve.
    client.register_model("tiny-overstated", demo_model_dir)
    with stack.database.session() as session:
        for table in (RegisteredModel, ModelVersion):  # the name's, and its version's
            session.execute(update(table)
                            .where(table.name == "tiny-overstated")  # type: ignore[arg-type]
                            .values(context_length=2 * CONTEXT))
    # The reconciler looks at running graphs older than a second.
    stack.start_control(env={"LLMOS_RECONCILE_GRACE_S": "1"})
    yield stack
    stack.stop()
    if admin is not None:
        drop_pg_database(admin, stack.database_url)


def _document(seed: int, words: int) -> str:
    rng = random.Random(seed)
    sentences = []
    while words > 0:
        n = rng.randint(4, 16)
        sentences.append(" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + ".")
        words -= n
    return " ".join(sentences)


def _children(stack: Stack, parent_id: str) -> list[Job]:
    with stack.database.session() as session:
        kids = graph_rows.children(session=session, parent_id=parent_id)
        session.expunge_all()
    return kids


def _reference(model_dir: Path, request: SummariseRequest, chunk_texts: list[str]
               ) -> tuple[list[str], str]:
    """The reference: each chunk's prompt, then the reduce prompt built from their
    outputs, run alone on the engine itself. (The partial summaries, the final one.)"""
    engine = TransformersEngine("reference", str(model_dir), BatchingOptions())
    engine.load()
    try:
        def solo(text: str) -> str:
            prompt = render_preset(request.model_copy(update={"text": text}), "summarise",
                                   "llama")
            [out] = engine.generate([EngineRequest(EngineSampling(request.max_tokens),
                                                   prompt=prompt)])
            return out.text.strip()

        partials = [solo(t) for t in chunk_texts]
        return partials, solo("\n\n".join(partials))
    finally:
        engine.unload()


def test_a_document_longer_than_the_context_is_summarised_by_a_graph(
        graph_stack: Stack, demo_model_dir: Path) -> None:
    client = graph_stack.client("graph-summarise")
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    text = _document(1, 5200)
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tokens > 3 * CONTEXT  # several times what one job could take

    with pytest.warns(NoLiveWorkerWarning):
        parent = client.summarise(model="tiny-graph", text=text, length="short")
    # No worker serves the model yet: the graph is planned, nothing has run.
    assert parent.status == JobStatus.running and parent.graph is not None
    first = parent.graph
    assert first.level == 0 and first.stage == GraphRole.part and first.done == 0
    assert first.total >= 4
    kids = _children(graph_stack, parent.id)
    assert [k.graph_index for k in kids] == list(range(first.total))
    assert all(k.priority == parent.priority and k.status == JobStatus.queued for k in kids)

    # Every chunk's prompt fits the model with its output; together the chunks hold
    # the whole document, each repeating OVERLAP tokens of the one before.
    family = "llama"
    request = SummariseRequest.model_validate(parent.payload)
    max_tokens = SUMMARY_BUDGETS["short"]
    chunk_texts = [SummariseRequest.model_validate(k.payload).text for k in kids]
    prompts = [render_preset(request.model_copy(update={"text": t}), "summarise", family)
               for t in chunk_texts]
    assert all(len(tokenizer(p)["input_ids"]) + max_tokens <= CONTEXT for p in prompts)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in chunk_texts]
    assert sum(len(i) for i in ids) - OVERLAP * (len(ids) - 1) in range(tokens - 4, tokens + 5)
    for before, after in itertools.pairwise(chunk_texts):
        assert before[-40:] in text and after[:40] in text
        assert text.index(after[:40]) < text.index(before[-40:])  # they overlap
    assert chunk_texts[0] == text[:len(chunk_texts[0])] and text.endswith(chunk_texts[-1])

    graph_stack.start_worker("graph@test", "--model", "tiny-graph", "--concurrency", "1")
    seen: list[GraphProgress] = [first]

    def finished() -> JobPublic | None:
        job = client.job(parent.id)
        if job.graph is not None and job.status == JobStatus.running:
            seen.append(job.graph)
        return job if job.status.is_final else None

    # Five generations of about 2,000 tokens of prompt each, one at a time: a longer
    # hang guard than one job's, for a machine loaded several times over.
    done = until(finished, "the graph ended", timeout_s=4 * HANG_GUARD_S, poll_s=0.02)
    assert done.status == JobStatus.succeeded, done.error_message
    # Progress only moved forward, and was seen between its start and its end.
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert any(0 < p.done < p.total for p in seen)
    assert done.graph == GraphProgress(level=1, stage=GraphRole.reduce, total=len(kids) + 1,
                                       done=len(kids) + 1, succeeded=len(kids) + 1)

    partials, final = _reference(demo_model_dir, request, chunk_texts)
    assert len(set(partials)) == len(partials)  # the model's output varies by chunk
    [reduce] = [k for k in _children(graph_stack, parent.id) if k.graph_role == GraphRole.reduce]
    assert SummariseRequest.model_validate(reduce.payload).text == "\n\n".join(partials)
    assert done.result is not None and done.result["summary"] == final
    assert done.usage is not None
    assert done.usage.completion_tokens == sum(
        k.completion_tokens or 0 for k in _children(graph_stack, parent.id))


def test_cancelling_the_parent_cancels_its_children(graph_stack: Stack) -> None:
    client = graph_stack.client("graph-cancel")
    with pytest.warns(NoLiveWorkerWarning):
        parent = client.summarise(model="tiny-idle", text=_document(2, 4000), length="short")
    kids = _children(graph_stack, parent.id)
    assert len(kids) >= 2 and all(k.status == JobStatus.queued for k in kids)
    # Its progress, as the HTTP API and `llmos job show --json` show it.
    waiting = {"level": 0, "stage": "part", "total": len(kids), "done": 0, "succeeded": 0}
    api = ApiServer.start(graph_stack)
    try:
        with api.http(api.key("graph-cancel")) as http:
            view = http.get(f"/v1/jobs/{parent.id}").raise_for_status().json()
    finally:
        api.stop()
    assert view["status"] == "running" and view["graph"] == waiting
    shown = llmos("job", "show", parent.id, "--json",
                  env={**graph_stack.env, "LLMOS_TENANT": "graph-cancel"})
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["graph"] == waiting

    cancelled = client.cancel(parent.id)
    assert cancelled.status == JobStatus.cancelled
    after = _children(graph_stack, parent.id)
    assert [k.status for k in after] == [JobStatus.cancelled] * len(kids)
    assert all(k.error_type == "GraphCancelled" for k in after)
    assert cancelled.graph is not None and cancelled.graph.done == len(kids)


def test_a_failed_child_fails_the_parent_with_its_reason(graph_stack: Stack) -> None:
    client = graph_stack.client("graph-fail")
    graph_stack.start_worker("overstated@test", "--model", "tiny-overstated",
                             "--concurrency", "1")
    # Planned for 4096 tokens a chunk: more than the model can take.
    parent = client.summarise(model="tiny-overstated", text=_document(3, 5000),
                              length="short")
    assert parent.graph is not None and parent.graph.total >= 2
    [done] = client.wait([parent.id], timeout_s=180)
    assert done.status == JobStatus.failed
    kids = _children(graph_stack, parent.id)
    [failed] = [k for k in kids if k.status == JobStatus.failed]
    assert failed.error_message is not None and "exceeds the model's context" in \
        failed.error_message
    assert done.error_type == failed.error_type
    assert done.error_message == (f"chunk {failed.graph_index} of level 0 (job {failed.id}) "
                                  f"failed: {failed.error_message}")
    # The others never ran, or ran and failed too: none is left waiting.
    assert all(k.status in (JobStatus.failed, JobStatus.cancelled) for k in kids)


def test_a_child_stopped_by_a_content_filter_fails_the_parent(
        graph_stack: Stack, demo_model_dir: Path) -> None:
    word = "forbiddenword"  # not a word the demo document is made of
    graph_stack.client().register_model("tiny-filtered", demo_model_dir)
    client = graph_stack.client("graph-filtered")
    client.set_filters(TenantFilters(block=[
        BlockRule(name="no-forbidden", words=[word], direction=Direction.input)]))
    graph_stack.start_worker("filtered@test", "--model", "tiny-filtered", "--concurrency", "1")
    parent = client.summarise(model="tiny-filtered", length="short",
                              text=_document(5, 4000) + f" The {word} ends it.")
    assert parent.graph is not None and parent.graph.total >= 2
    [done] = client.wait([parent.id], timeout_s=180)

    kids = _children(graph_stack, parent.id)
    stopped = [k for k in kids if k.status == JobStatus.filtered]
    assert stopped and all(k.filter_rule == "no-forbidden" for k in stopped)
    assert done.status == JobStatus.failed and done.error_type == "ContentFiltered"
    assert done.error_message in {f"chunk {k.graph_index} of level 0 (job {k.id}) filtered: "
                                  f"{k.error_message}" for k in stopped}
    assert word not in done.error_message
    assert all(k.status.is_final for k in kids)


def _children_end_unfollowed(stack: Stack, parent_id: str, level: int = 0,
                             summary: Callable[[int], str] | None = None) -> list[str]:
    """Every child of the graph's ``level`` succeeds as a worker would record it (with
    ``summary(index)``), and nobody follows it up (as when the worker died right after
    its commit). Their summaries."""
    summaries = []
    with stack.database.session() as session:
        for kid in graph_rows.children(session=session, parent_id=parent_id, level=level):
            assert kid.graph_index is not None
            text = (summary or (lambda i: f"part {i} of {parent_id}"))(kid.graph_index)
            kid.status = JobStatus.succeeded
            kid.prompt_tokens, kid.completion_tokens = 1, 1
            kid.result = SummariseResult(
                summary=text, finish_reason="length",
                usage=Usage(prompt_tokens=1, completion_tokens=1)).model_dump(mode="json")
            session.add(kid)
            summaries.append(text)
    return summaries


def test_the_reduce_is_created_once_when_followups_race(graph_stack: Stack) -> None:
    client = graph_stack.client("graph-race")
    with pytest.warns(NoLiveWorkerWarning):
        parent = client.summarise(model="tiny-idle", text=_document(4, 4000), length="short")
    summaries = _children_end_unfollowed(graph_stack, parent.id)
    submitter = Submitter(graph_stack.settings(), graph_stack.database)
    barrier = threading.Barrier(6)

    def follow_up() -> None:
        barrier.wait()
        graphs.child_ended(submitter, parent.id)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoLiveWorkerWarning)
        threads = [threading.Thread(target=follow_up) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        graphs.child_ended(submitter, parent.id)  # and once more, later
    reduces = [k for k in _children(graph_stack, parent.id) if k.graph_role == GraphRole.reduce]
    assert len(reduces) == 1
    assert SummariseRequest.model_validate(reduces[0].payload).text == "\n\n".join(summaries)
    assert client.job(parent.id).graph == GraphProgress(
        level=1, stage=GraphRole.reduce, total=len(summaries) + 1, done=len(summaries),
        succeeded=len(summaries))


def test_the_reconciler_moves_on_a_graph_whose_followup_was_lost(graph_stack: Stack) -> None:
    client = graph_stack.client("graph-lost")
    with pytest.warns(NoLiveWorkerWarning):
        parent = client.summarise(model="tiny-idle", text=_document(5, 4000), length="short")
    summaries = _children_end_unfollowed(graph_stack, parent.id)
    # Nobody calls child_ended here: the control process's pass over running graphs does.
    [reduce] = until(lambda: [k for k in _children(graph_stack, parent.id)
                              if k.graph_role == GraphRole.reduce],
                     "the reconciler created the reduce")
    assert SummariseRequest.model_validate(reduce.payload).text == "\n\n".join(summaries)
    assert reduce.status == JobStatus.queued and reduce.priority == parent.priority


def test_a_graph_whose_children_could_not_be_sent_fails_at_once(graph_stack: Stack) -> None:
    # Dispatcher off: a child held for the dispatcher needs no broker at submission (the
    # control process sends it); this is about the children the producer publishes.
    unreachable = LlmosClient(tenant="graph-unsent", settings=graph_stack.settings().model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "dispatch": "off"}))
    # The stack's control process sends again a job queued past its grace (1 s here): on
    # a loaded machine it can send the children before this producer's own retries give
    # up, and the graph then rightly lives on. Without it, the outcome is the producer's.
    controls = [p for p in graph_stack.workers if "control" in p.args and p.poll() is None]
    for control in controls:
        graph_stack.stop_worker(control)
    try:
        with pytest.raises(BrokerUnavailable, match="could not enqueue"):
            unreachable.summarise(model="tiny-idle", text=_document(6, 4000), length="short")
    finally:
        for _ in controls:
            graph_stack.start_control(env={"LLMOS_RECONCILE_GRACE_S": "1"}, wait=True)
    [parent] = [j for j in graph_stack.client("graph-unsent").jobs(limit=100)
                if j.graph_role == GraphRole.parent]
    assert parent.status == JobStatus.failed and parent.error_type == "BrokerUnavailable"
    assert parent.error_message is not None and "broker unreachable" in parent.error_message
    kids = _children(graph_stack, parent.id)
    assert kids and all(k.status in (JobStatus.failed, JobStatus.cancelled) for k in kids)


def test_partial_summaries_that_do_not_fit_are_chunked_again(graph_stack: Stack) -> None:
    client = graph_stack.client("graph-levels")
    with pytest.warns(NoLiveWorkerWarning):
        parent = client.summarise(model="tiny-idle", text=_document(7, 4000), length="short")
    submitter = Submitter(graph_stack.settings(), graph_stack.database)
    # Partial summaries of about 900 tokens each: joined, no job could take them.
    long = _children_end_unfollowed(graph_stack, parent.id, 0, lambda i: _document(10 + i, 800))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoLiveWorkerWarning)
        graphs.child_ended(submitter, parent.id)
        level_1 = _children(graph_stack, parent.id)[len(long):]
        assert len(level_1) >= 2
        assert {(k.graph_role, k.graph_level) for k in level_1} == {(GraphRole.part, 1)}
        texts = [SummariseRequest.model_validate(k.payload).text for k in level_1]
        joined = "\n\n".join(long)
        assert texts[0] == joined[:len(texts[0])] and joined.endswith(texts[-1])
        # Short ones now: the next level is the reduce of the joined summaries.
        short = _children_end_unfollowed(graph_stack, parent.id, 1)
        graphs.child_ended(submitter, parent.id)
    [reduce] = _children(graph_stack, parent.id)[len(long) + len(level_1):]
    assert (reduce.graph_role, reduce.graph_level) == (GraphRole.reduce, 2)
    assert SummariseRequest.model_validate(reduce.payload).text == "\n\n".join(short)
    [final] = _children_end_unfollowed(graph_stack, parent.id, 2, lambda _: "the summary")
    graphs.child_ended(submitter, parent.id)
    done = client.job(parent.id)
    assert done.status == JobStatus.succeeded and done.summarise_result().summary == final
    total = len(long) + len(level_1) + 1
    assert done.graph == GraphProgress(level=2, stage=GraphRole.reduce, total=total,
                                       done=total, succeeded=total)
    assert done.usage is not None and done.usage.completion_tokens == total


@pytest.mark.filterwarnings("ignore::llmos_jobs.errors.NoLiveWorkerWarning")
def test_a_worker_killed_in_the_middle_of_a_graph_does_not_strand_it(
        graph_stack: Stack, demo_model_dir: Path) -> None:
    client = graph_stack.client("graph-kill")
    client.register_model("tiny-kill", demo_model_dir)
    victim = graph_stack.start_worker("kill1@test", "--model", "tiny-kill", "--concurrency", "1")
    parent = client.summarise(model="tiny-kill", text=_document(8, 4000), length="short")
    request = SummariseRequest.model_validate(parent.payload)
    chunk_texts = [SummariseRequest.model_validate(k.payload).text
                   for k in _children(graph_stack, parent.id)]

    def a_child_runs() -> bool:
        return any(k.status == JobStatus.running for k in _children(graph_stack, parent.id))

    until(a_child_runs, "a child of the graph ran on the worker", poll_s=0.02)
    os.killpg(victim.pid, signal.SIGKILL)  # the whole worker, mid-graph
    victim.wait()
    graph_stack.start_worker("kill2@test", "--model", "tiny-kill", "--concurrency", "1")
    [done] = client.wait([parent.id], timeout_s=300)
    assert done.status == JobStatus.succeeded, done.error_message
    _, final = _reference(demo_model_dir, request, chunk_texts)
    assert done.summarise_result().summary == final
    kids = _children(graph_stack, parent.id)
    assert all(k.status == JobStatus.succeeded for k in kids)
    assert any(k.attempts > 1 for k in kids)  # the killed one ran again
