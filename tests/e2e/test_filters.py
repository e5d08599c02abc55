"""Content filters end to end: a tenant's rules, set as an operator sets them, applied
by real workers. A block rule ends a job `filtered` with the rule named, audited and
announced by its webhook; an output rule redacts what a real model wrote (reference: a
solo greedy run of the same prompt on the engine directly, redacted by the rule); a
turn's message is stored redacted; another tenant is unaffected."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos_jobs.client import LlmosClient
from llmos_jobs.db.audit import list_events
from llmos_jobs.db.session import session_scope
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.filters import FILTERED_ACTION, FILTERED_STATUS
from llmos_jobs.services.webhooks.signing import tenant_secret
from schemas.common import JobStatus
from schemas.filters import BlockRule, Direction, ModerationRule, RedactionRule, TenantFilters
from tests.support.api_server import ApiServer, audit, wait_job
from tests.support.cli import llmos
from tests.support.stack import WEBHOOK_ALLOWED_HOSTS, Stack, make_stack
from tests.support.webhook_receiver import Receiver
from workers.engines.base import EngineRequest, EngineSampling
from workers.engines.transformers import TransformersEngine

FILTERS_REDIS_DB = 15


def _tenant(kind: str) -> str:
    return f"flt-{kind}-{uuid.uuid4().hex[:8]}"


def _client(stack: Stack, tenant: str) -> LlmosClient:
    settings = stack.settings().model_copy(
        update={"webhook_allowed_hosts": WEBHOOK_ALLOWED_HOSTS})
    return LlmosClient(tenant=tenant, settings=settings)


@pytest.fixture
def receiver_of(stack: Stack) -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def _receiver(stack: Stack, tenant: str, started: list[Receiver]) -> Receiver:
    with session_scope(stack.database) as session:
        secret = tenant_secret(session=session, tenant=tenant).secret
    receiver = Receiver(secret=secret).start()
    started.append(receiver)
    return receiver


@pytest.mark.parametrize("side", [Direction.input, Direction.output])
def test_a_block_rule_ends_the_job_filtered_named_audited_and_announced(
        stack: Stack, receiver_of: list[Receiver], side: Direction) -> None:
    tenant, bystander = _tenant("block"), _tenant("free")
    word = f"codeword{uuid.uuid4().hex[:6]}"
    client = _client(stack, tenant)
    # The session stack's no-op engine answers "ok ..." to anything: an output rule on
    # "ok" blocks every output; an input rule on the word blocks the prompt.
    rule = (BlockRule(name="no-codewords", words=[word], direction=Direction.input)
            if side == Direction.input else
            BlockRule(name="no-ok", pattern=r"\bok\b", direction=Direction.output))
    client.set_filters(TenantFilters(block=[rule]))
    receiver = _receiver(stack, tenant, receiver_of)
    prompt = f"please tell me the {word} now"

    job = client.generate(model="echo", prompt=prompt, max_tokens=3, webhook=receiver.url)
    other = _client(stack, bystander).generate(model="echo", prompt=prompt, max_tokens=3)
    [done] = client.wait([job.id])
    [free] = _client(stack, bystander).wait([other.id])

    assert done.status == JobStatus.filtered and done.result is None
    assert done.filter_rule == rule.name and done.error_type == "ContentFiltered"
    where = "input" if side == Direction.input else "output"
    assert done.error_message == f"{where} blocked by the content filter rule {rule.name!r}"
    # Another tenant's identical job is untouched by this tenant's rules.
    assert free.status == JobStatus.succeeded
    assert free.generate_result().text == "ok ok ok"

    [request] = receiver.wait_for(1)
    body = json.loads(request.body)
    assert request.verified and body["type"] == "job.filtered"
    assert body["data"]["status"] == "filtered" and body["data"]["filter_rule"] == rule.name
    assert word.encode() not in request.body

    with session_scope(stack.database) as session:
        events = [e for e in list_events(session=session, tenant=tenant)
                  if e.action == FILTERED_ACTION]
    assert [(e.resource_id, e.outcome, e.status_code) for e in events] == [
        (job.id, "denied", FILTERED_STATUS)]

    if stack.name == "sqlite":  # the blocked text is nowhere in clear: rows, logs, files
        for path in stack.data_dir.rglob("*"):
            if path.is_file():
                assert word.encode() not in path.read_bytes(), path


def test_presets_and_structured_outputs_pass_through_the_same_rules(stack: Stack) -> None:
    tenant = _tenant("preset")
    word = f"codeword{uuid.uuid4().hex[:6]}"
    client = _client(stack, tenant)
    client.set_filters(TenantFilters(block=[
        BlockRule(name="no-codewords", words=[word], direction=Direction.input),
        BlockRule(name="no-ok", pattern=r"\bok\b", direction=Direction.output)]))
    schema = {"type": "object", "properties": {"ok": {"type": "string"}}}

    # The caller's text is screened inside the rendered prompt; the no-op engine's
    # "ok ..." is screened before it is parsed or validated.
    summary = client.summarise(model="echo", text=f"a note about the {word}")
    translation = client.translate(model="echo", text="bonjour", target_language="en")
    structured = client.generate(model="echo", prompt="answer in JSON", max_tokens=3,
                                 response_format={"type": "json_schema",
                                                  "json_schema": {"schema": schema}})
    ended = {j.id: j for j in client.wait([summary.id, translation.id, structured.id],
                                          timeout_s=60)}

    assert [(ended[j.id].status, ended[j.id].filter_rule)
            for j in (summary, translation, structured)] == [
        (JobStatus.filtered, "no-codewords"), (JobStatus.filtered, "no-ok"),
        (JobStatus.filtered, "no-ok")]


def test_a_turns_message_is_redacted_before_it_is_stored(stack: Stack) -> None:
    tenant = _tenant("turn")
    client = _client(stack, tenant)
    client.set_filters(TenantFilters(redact=[RedactionRule(
        name="emails", pattern=r"[\w.+-]+@[\w-]+\.\w+", replacement="<email>",
        direction=Direction.input)]))
    mindspace = client.create_mindspace(model="echo")
    [turn] = client.wait([client.chat(mindspace.id, "write  to ann@example.org\tplease").id],
                         timeout_s=60)
    assert turn.status == JobStatus.succeeded
    messages = client.mindspace(mindspace.id).messages
    # Normalised (whitespace) and redacted: what the history keeps and the model saw.
    assert [(m.role, m.content) for m in messages] == [
        ("user", "write to <email> please"), ("assistant", turn.turn_result().reply)]
    assert turn.redacted_by == ["emails"]  # nothing is changed silently


def test_bad_rules_are_refused_and_the_old_ones_kept(stack: Stack) -> None:
    client = _client(stack, _tenant("bad"))
    good = TenantFilters(block=[BlockRule(name="b", words=["x"])])
    client.set_filters(good)
    with pytest.raises(InvalidRequest, match=r"block\.0\.pattern: .*regular expression"):
        client.set_filters({"block": [{"name": "b", "pattern": "(unclosed"}]})
    assert client.filters() == good


def test_operators_set_a_tenants_filters_over_http(api: ApiServer) -> None:
    tenant = _tenant("http")
    rules = {"block": [{"name": "no-rockets", "words": ["rocket fuel"], "direction": "in"}]}
    path = f"/v1/tenants/{tenant}/filters"
    with api.http(api.key(tenant)) as own:  # a tenant's own admin key may not
        assert own.put(path, json=rules).status_code == 403
        assert own.get(path).status_code == 403
    with api.http(api.operator_key()) as ops:
        refused = ops.put(path, json={"block": [{"name": "b", "pattern": "("}]})
        assert refused.status_code in (400, 422)
        assert "pattern" in refused.text and "regular expression" in refused.text
        saved = ops.put(path, json=rules)
        assert saved.status_code == 200, saved.text
        assert ops.get(path).json() == saved.json()
        assert saved.json()["block"][0]["name"] == "no-rockets"
        verdict = ops.post(f"{path}/test", json={"text": "Rocket  Fuel!", "side": "in"})
        assert verdict.json() == {"text": "", "redacted_by": [], "blocked_by": "no-rockets"}
    with api.http(api.key(tenant)) as own:
        job = own.post("/v1/jobs", json={"model": "echo", "prompt": "buy rocket fuel",
                                         "max_tokens": 2}).raise_for_status().json()
        done = wait_job(own, job["id"])
    assert done["status"] == "filtered" and done["filter_rule"] == "no-rockets"
    with api.http(api.key(tenant)) as own:
        chat = own.post("/v1/chat/completions", json={
            "model": "echo", "max_tokens": 2,
            "messages": [{"role": "user", "content": "where is the ROCKET fuel"}]})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "content_filter"
    assert "no-rockets" in chat.json()["error"]["message"]
    actions = {(row["action"], row["resource_id"]) for row in audit(api, tenant)}
    assert {("filters.set", tenant), (FILTERED_ACTION, job["id"])} <= actions


@pytest.mark.postgres_only  # the command line's surface, the same on any database
def test_the_cli_sets_shows_and_tries_a_tenants_filters(stack: Stack) -> None:
    tenant = _tenant("cli")
    env = stack.env
    out = llmos("--tenant", tenant, "tenant", "filters", "set", "--pii", "email",
                "--pii-side", "out", "--block", "words", "--word", "hush", "--json", env=env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(llmos("--tenant", tenant, "tenant", "filters", "show", "--json",
                             env=env).stdout)
    assert shown == json.loads(out.stdout)
    assert [(r["name"], r["direction"]) for r in shown["redact"]] == [("pii.email", "out")]
    tried = llmos("--tenant", tenant, "tenant", "filters", "test", "mail a@b.io",
                  "--side", "out", "--json", env=env)
    assert tried.returncode == 0 and json.loads(tried.stdout) == {
        "text": "mail [EMAIL]", "redacted_by": ["pii.email"], "blocked_by": None}
    blocked = llmos("--tenant", tenant, "tenant", "filters", "test", "HUSH now", env=env)
    assert blocked.returncode == 3 and "words" in blocked.stdout
    unknown = llmos("--tenant", tenant, "tenant", "filters", "set", "--pii", "passport",
                    env=env)
    assert unknown.returncode != 0 and "passport" in unknown.stderr
    # Another tenant still has the defaults.
    other = llmos("--tenant", _tenant("cli"), "tenant", "filters", "show", "--json", env=env)
    assert json.loads(other.stdout) == TenantFilters().model_dump(mode="json")


# -- a real model: the output rule against a solo greedy reference ------------------------------


@pytest.fixture(scope="module")
def model_stack(redis_base: str, demo_model_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack("sqlite", redis_base, None, tmp_path_factory.mktemp("filters"),
                       redis_db=FILTERS_REDIS_DB)
    stack.client().register_model("tiny", demo_model_dir)
    # The same weights as the moderation step's classifier: a model like any other.
    stack.client().register_model("guard", demo_model_dir)
    stack.start_worker("filters@test", "--model", "tiny", "--model", "guard",
                       "--concurrency", "2")
    yield stack
    stack.stop()


def test_an_output_rule_redacts_what_the_model_wrote(model_stack: Stack,
                                                     demo_model_dir: Path) -> None:
    prompt = "the worker keeps a prefix cache"
    engine = TransformersEngine("reference", str(demo_model_dir))
    [solo] = engine.generate([EngineRequest(EngineSampling(max_tokens=12), prompt=prompt)])
    reference = solo.text
    # A piece of what the model will write, as the rule's pattern: it must change it.
    piece = reference.strip()[1:4]
    assert len(piece) == 3 and piece in reference
    rule = RedactionRule(name="piece", pattern=re.escape(piece), replacement="<cut>",
                         direction=Direction.output)
    filtered, bystander = _tenant("out"), _tenant("ref")
    model_stack.client(filtered).set_filters(TenantFilters(redact=[rule]))

    jobs = {t: model_stack.client(t).generate(model="tiny", prompt=prompt, max_tokens=12)
            for t in (filtered, bystander)}
    done = {t: model_stack.client(t).wait([j.id])[0] for t, j in jobs.items()}

    assert done[bystander].generate_result().text == reference
    expected = re.sub(re.escape(piece), "<cut>", reference)
    assert expected != reference
    assert done[filtered].status == JobStatus.succeeded
    assert done[filtered].generate_result().text == expected
    assert done[filtered].redacted_by == ["piece"] and done[bystander].redacted_by is None
    # Redaction changes the text, not what the model computed.
    mine, theirs = done[filtered].usage, done[bystander].usage
    assert mine is not None and theirs is not None
    assert (mine.prompt_tokens, mine.completion_tokens) == (
        theirs.prompt_tokens, theirs.completion_tokens)


def test_the_moderation_model_decides_by_its_output(model_stack: Stack,
                                                    demo_model_dir: Path) -> None:
    prompt = "is this request safe to answer"
    engine = TransformersEngine("reference", str(demo_model_dir))
    # What the classifier will say of the prompt: a solo greedy run of it.
    [said] = engine.generate([EngineRequest(EngineSampling(max_tokens=4), prompt=prompt)])
    [answer] = engine.generate([EngineRequest(EngineSampling(max_tokens=6), prompt=prompt)])
    assert said.text.strip()
    matching, never = _tenant("mod"), _tenant("mod-pass")
    for tenant, block_when in ((matching, re.escape(said.text)), (never, r"(?!)")):
        model_stack.client(tenant).set_filters(TenantFilters(moderation=ModerationRule(
            name="guard-says", model="guard", block_when=block_when, max_tokens=4)))
    jobs = {t: model_stack.client(t).generate(model="tiny", prompt=prompt, max_tokens=6)
            for t in (matching, never)}
    done = {t: model_stack.client(t).wait([j.id])[0] for t, j in jobs.items()}
    assert done[matching].status == JobStatus.filtered
    assert done[matching].filter_rule == "guard-says"
    assert done[matching].error_message == (
        "input blocked by the content filter moderation step 'guard-says'")
    # Where the classifier's output does not match, the job runs as if it were not there.
    assert done[never].generate_result().text == answer.text
