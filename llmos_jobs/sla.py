"""A job's deadline from what its producer asked: an absolute moment (``deadline``, ISO
8601 with a zone) or an SLA class (``sla``, seconds from submission set by
LLMOS_SLA_<CLASS>_S). The deadline is the latest moment the job may start; a job not
started by then ends `expired` without running (llmos_jobs.services.deadlines).

Below the services so that every producer (the client, the HTTP API, batch expansion)
resolves a request the same way, with the same errors."""

from __future__ import annotations

from datetime import datetime, timedelta

from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.settings import Settings


def parse_moment(value: datetime | str) -> datetime:
    """``value`` as an aware datetime, or InvalidRequest: a moment without a zone could
    be any of 24 hours, so it is refused rather than guessed."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                f"deadline {value!r} is not an ISO 8601 date and time, such as "
                "2026-11-30T05:00:00Z") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(
            f"deadline {value.isoformat()} has no time zone: give one (Z for UTC, or an "
            "offset such as +01:00)")
    return value


def resolve(settings: Settings, *, deadline: datetime | str | None = None,
            sla: str | None = None, now: datetime | None = None) -> datetime | None:
    """The deadline a request asks for (None: none), measured from ``now`` (the
    submission; default: this moment), or InvalidRequest naming what is wrong: both
    given, an unknown class, a moment without a zone, in the past, or further than
    LLMOS_DEADLINE_MAX_S."""
    if deadline is not None and sla is not None:
        raise InvalidRequest("give a deadline or an sla class, not both")
    now = now or utcnow()
    if sla is not None:
        classes = settings.sla_classes()
        seconds = classes.get(sla.strip().lower())
        if seconds is None:
            known = ", ".join(f"{name} ({s:g} s)" for name, s in classes.items())
            raise InvalidRequest(f"unknown sla class {sla!r}: use one of {known}")
        return now + timedelta(seconds=seconds)
    if deadline is None:
        return None
    moment = parse_moment(deadline)
    if moment <= now:
        raise InvalidRequest(
            f"deadline {moment.isoformat()} is in the past (now: "
            f"{now.isoformat(timespec='seconds')})")
    if moment - now > timedelta(seconds=settings.deadline_max_s):
        raise InvalidRequest(
            f"deadline {moment.isoformat()} is more than {settings.deadline_max_s:g} s "
            "away (LLMOS_DEADLINE_MAX_S); give a nearer one, or none")
    return moment
