"""The OpenAI-compatible routes, called through the official `openai` SDK: the reply
comes from the real worker through the queue."""

from __future__ import annotations

from datetime import datetime

import openai
import pytest

from tests.support.api_server import (
    API_WAIT_TIMEOUT_S,
    REQUEST_HANG_GUARD_S,
    ApiServer,
    idle_model,
    tenant,
)


def sdk(api: ApiServer, key: str) -> openai.OpenAI:
    # No retries: a test must see the first answer, not a retried one.
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0,
                         timeout=REQUEST_HANG_GUARD_S)


def test_chat_completion_runs_through_the_queue(api: ApiServer) -> None:
    key = api.key(tenant())
    completion = sdk(api, key).chat.completions.create(
        model="echo", max_tokens=3,
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "say something nice"}],
    )
    assert completion.object == "chat.completion" and completion.model == "echo"
    [choice] = completion.choices
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content == "ok ok ok"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (5, 3, 8)
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    # The job behind it: interactive priority, run by the stack's worker.
    assert completion.id.startswith("chatcmpl-")
    with api.http(key) as http:
        job = http.get(f"/v1/jobs/{completion.id.removeprefix('chatcmpl-')}").json()
    assert job["status"] == "succeeded" and job["priority"] == 1
    assert job["status"] == "succeeded" and "worker" not in job
    created = datetime.fromisoformat(job["created_at"])
    assert abs(completion.created - created.timestamp()) <= 1


def test_request_options_map_onto_the_job(api: ApiServer) -> None:
    key = api.key(tenant())
    completion = sdk(api, key).chat.completions.create(
        model="echo", max_tokens=9, max_completion_tokens=2, temperature=0.5, stop=["zzz"],
        messages=[{"role": "developer", "content": "rules"},
                  {"role": "user", "content": [{"type": "text", "text": "part one"}]}],
    )
    assert completion.choices[0].message.content == "ok ok"  # max_completion_tokens wins
    with api.http(key) as http:
        payload = http.get(f"/v1/jobs/{completion.id[len('chatcmpl-'):]}").json()["payload"]
    assert payload["max_tokens"] == 2 and payload["temperature"] == 0.5
    assert payload["stop"] == ["zzz"]
    assert payload["messages"] == [{"role": "system", "content": "rules"},
                                   {"role": "user", "content": "part one"}]


def test_models_list_is_openai_shaped(api: ApiServer) -> None:
    models = list(sdk(api, api.key(tenant(), "models:read")).models.list())
    by_id = {m.id: m for m in models}
    assert {"echo", "broken"} <= set(by_id)
    assert all(m.object == "model" and m.owned_by == "llmos" for m in models)
    assert by_id["echo"].created > 1_600_000_000


def test_refusals_arrive_as_the_sdks_errors(api: ApiServer) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        sdk(api, "llmos_" + "0" * 40).chat.completions.create(model="echo", messages=messages)
    reader = sdk(api, api.key(tenant(), "jobs:read"))
    with pytest.raises(openai.PermissionDeniedError, match="jobs:write"):
        reader.chat.completions.create(model="echo", messages=messages)
    client = sdk(api, api.key(tenant()))
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model="echo", messages=messages, top_p=0.5)
    with pytest.raises(openai.BadRequestError, match="'nope' is not registered"):
        client.chat.completions.create(model="nope", messages=messages)
    with pytest.raises(openai.BadRequestError, match=r"messages\.0\.content"):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": ""}])


def test_a_failed_job_is_a_server_error(api: ApiServer) -> None:
    client = sdk(api, api.key(tenant()))
    with pytest.raises(openai.InternalServerError, match="failed") as info:
        client.chat.completions.create(model="broken", messages=[{"role": "user",
                                                                   "content": "hi"}])
    assert info.value.status_code == 500


def test_a_reply_that_takes_too_long_is_504_and_its_job_cancelled(
        api_short_wait: ApiServer) -> None:
    api = api_short_wait
    model = idle_model(api)
    key = api.key(tenant())
    with pytest.raises(openai.APIStatusError, match="was cancelled") as info:
        sdk(api, key).chat.completions.create(model=model,
                                              messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 504
    assert f"within {API_WAIT_TIMEOUT_S} s" in info.value.message
    with api.http(key) as http:
        [job] = http.get("/v1/jobs").json()["data"]
    assert job["status"] == "cancelled" and job["model"] == model
