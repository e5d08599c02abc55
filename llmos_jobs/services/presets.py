"""Task presets (summarise, translate, answer, classify, extract): submitted like a
generation, to the language queue of the model, with a typed request of their kind."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker_config import TaskName, queue_for
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import registry, versions
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.prompt_templates import DEFAULT_FAMILY
from llmos_jobs.services import graphs
from llmos_jobs.services.submission import Submitter, validate
from schemas.common import JobKind
from schemas.tasks import (
    PRESET_KINDS,
    REQUESTS,
    AnswerRequest,
    PresetRequest,
)


def preset_kind(name: str) -> JobKind:
    """The preset kind called ``name``, or InvalidRequest listing them."""
    for kind in PRESET_KINDS:
        if kind.value == name:
            return kind
    raise InvalidRequest(f"unknown task {name!r}: use one of "
                         f"{', '.join(k.value for k in PRESET_KINDS)}")


def _check_sizes(submitter: Submitter, request: PresetRequest) -> None:
    limits = submitter.limits
    if isinstance(request, AnswerRequest):
        limits.text_bytes("question", request.question, "prompt_bytes")
        limits.text_bytes("context", "\n".join(request.context), "prompt_bytes")
    else:
        limits.text_bytes("text", request.text, "prompt_bytes")


def checked_request(submitter: Submitter, kind: JobKind, data: dict[str, Any]
                    ) -> PresetRequest:
    """``data`` as a request of preset ``kind`` that fits the limits and its model, or
    InvalidRequest naming what does not."""
    request = validate(REQUESTS[kind], data)
    _check_sizes(submitter, request)
    submitter.check_model(request.model, request.max_tokens)
    return request


def submit_preset(submitter: Submitter, tenant: str, kind: JobKind, data: dict[str, Any], *,
                  priority: int, webhook: str | None, deadline: datetime | None = None
                  ) -> JobPublic:
    """One job; or, for a text longer than its model's context, a job graph of its
    chunks (llmos_jobs.services.graphs) whose parent is returned. ``deadline``: the
    latest moment it (each child of a graph) may start."""
    request = checked_request(submitter, kind, data)
    payload = request.model_dump(mode="json")
    webhook_url = submitter.check_webhook(webhook)
    chunks = graphs.split_if_long(submitter, kind, payload)
    if chunks is not None:
        return graphs.submit(submitter, tenant, kind=kind, model=request.model,
                             payload=payload, chunks=chunks, priority=priority,
                             webhook=webhook_url, deadline=deadline)
    [job] = submitter.enqueue([job_rows.JobCreate(
        tenant=tenant, kind=kind, priority=priority, model=request.model,
        payload=payload, queue=queue_for(TaskName.preset, model=request.model),
        webhook_url=webhook_url, deadline=deadline)])
    return job


def model_family(database: Database, model: str) -> str:
    """The template family of a registered model (``NAME`` or ``NAME@N``): its config's
    ``model_type``, or the default family when the model declares none."""
    with database.session() as session:
        path = versions.resolve(session=session, model=model).path
    return registry.model_type_of(path) or DEFAULT_FAMILY
