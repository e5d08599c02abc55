"""Deadline requests: what each producer may ask, and the errors that say why not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from llmos_jobs import sla as sla_rules
from llmos_jobs.api.bodies import JobSubmit, TurnSubmit
from llmos_jobs.api.openai_schemas import ChatCompletionRequest
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.settings import Settings
from llmos_jobs.states import JOBS
from schemas.common import JobStatus

NOW = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
SETTINGS = Settings(sla_interactive_s=30, sla_standard_s=300, sla_batch_s=86_400,
                    deadline_max_s=7 * 86_400)


def resolve(**asked: object) -> datetime | None:
    return sla_rules.resolve(SETTINGS, now=NOW, **asked)  # type: ignore[arg-type]


def test_a_class_counts_from_the_submission_and_a_moment_is_kept_as_given() -> None:
    assert resolve() is None
    assert resolve(sla="interactive") == NOW + timedelta(seconds=30)
    assert resolve(sla=" Batch ") == NOW + timedelta(days=1)
    paris = NOW.astimezone(timezone(timedelta(hours=1))) + timedelta(minutes=5)
    assert resolve(deadline=paris) == paris
    assert resolve(deadline="2026-11-30T04:05:00Z") == NOW + timedelta(minutes=5)
    assert resolve(deadline="2026-11-30T05:05:00+01:00") == NOW + timedelta(minutes=5)


def test_classes_are_settings_with_flat_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOS_SLA_INTERACTIVE_S", "7")
    monkeypatch.setenv("LLMOS_SLA_BATCH_S", "3600")
    assert Settings().sla_classes() == {"interactive": 7, "standard": 300, "batch": 3600}


@pytest.mark.parametrize(("asked", "says"), [
    ({"deadline": "2026-11-30T03:59:59Z"}, "in the past"),
    ({"deadline": NOW}, "in the past"),
    ({"deadline": "2026-12-30T04:00:00Z"}, "LLMOS_DEADLINE_MAX_S"),
    ({"deadline": "2026-11-30T05:00:00"}, "no time zone"),
    ({"deadline": datetime(2026, 11, 30, 5, 0)}, "no time zone"),
    ({"deadline": "tomorrow"}, "not an ISO 8601"),
    ({"sla": "whenever"}, "interactive (30 s), standard (300 s), batch (86400 s)"),
    ({"sla": "interactive", "deadline": "2026-11-30T05:00:00Z"}, "not both"),
])
def test_a_deadline_that_cannot_be_kept_is_refused_saying_why(asked: dict[str, object],
                                                              says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        resolve(**asked)
    assert says in str(refused.value)


def test_http_bodies_refuse_a_naive_moment_and_both_fields() -> None:
    for body in (JobSubmit, TurnSubmit):
        base = ({"model": "m", "prompt": "p"} if body is JobSubmit else {"message": "hi"})
        with pytest.raises(ValidationError, match="timezone"):
            body.model_validate({**base, "deadline": "2026-11-30T05:00:00"})
        with pytest.raises(ValidationError, match="not both"):
            body.model_validate({**base, "deadline": "2026-11-30T05:00:00Z", "sla": "batch"})
        assert body.model_validate({**base, "sla": "batch"}).sla == "batch"
    chat = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "deadline": "2026-11-30T05:00:00+02:00"})
    assert chat.deadline == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def test_expired_is_final_and_never_follows_a_start() -> None:
    assert JobStatus.expired.is_final and JOBS.is_final(JobStatus.expired)
    assert JobStatus.running not in JOBS.sources_of(JobStatus.expired)
