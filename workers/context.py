"""What every job handler of a worker is given (``WorkerContext``) and returns
(``Outcome``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import Job
from llmos_jobs.services import turns
from llmos_jobs.services.submission import Submitter
from llmos_jobs.settings import Settings
from schemas.common import Usage
from workers.engines.pool import EnginePool
from workers.held import HeldJobs
from workers.streaming import EventPublisher
from workers.watch import JobWatcher


@dataclass
class Outcome:
    result: dict[str, Any]
    usage: Usage
    # Effects that must land in the same transaction as the job's success.
    persist: Callable[[Session], None] | None = None
    # The content filter rules that redacted its input or output.
    redacted_by: Sequence[str] = ()


@dataclass(frozen=True)
class WorkerContext:
    name: str
    submitter: Submitter  # this process's settings and database
    pool: EnginePool
    claimant_dead: Callable[[Job], bool]
    watcher: JobWatcher
    publish: turns.Publish  # the turns that ending a turn releases
    held: HeldJobs = field(default_factory=HeldJobs)  # the attempts this process runs
    # Who writes the files of a batch whose last job ended (the control process);
    # None: this process, at once.
    finalize_batch: Callable[[str], None] | None = None
    # Where jobs' live events go (status changes, text as it is decoded); None: no
    # Redis holds them (a RabbitMQ broker without LLMOS_STREAM_URL).
    events: EventPublisher | None = None

    @property
    def settings(self) -> Settings:
        return self.submitter.settings

    @property
    def database(self) -> Database:
        return self.submitter.database

    @property
    def time_limit_s(self) -> float:
        """LLMOS_JOB_TIME_LIMIT_S: no job runs longer."""
        return self.settings.job_time_limit_s


class JobTimeout(Exception):
    """The job ran past its time limit; the engine stopped it."""


def usage_of(prompt: int, completion: int, cached: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
