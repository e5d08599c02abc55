"""What `llmos scale recommend --json` prints: the workers each model needs now, with
the figures behind the number (llmos_jobs.scaling explains the formula)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.common import Contract


class ModelScale(Contract):
    """One model's scaling signal (the gauge llmos_model_workers_needed{model})."""

    model: str
    queued: int = Field(ge=0, description="jobs waiting (status queued in the database)")
    running: int = Field(ge=0)
    deadlines: int = Field(ge=0, description="queued jobs whose deadline falls within "
                                             "the drain target")
    live_workers: int = Field(ge=0, description="workers alive that serve the model")
    concurrency: float = Field(ge=1, description="slots per worker (mean of those serving it)")
    jobs_per_worker_s: float = Field(gt=0, description="jobs finished per busy "
                                                       "worker-second (or the default)")
    measured: bool = Field(description="false: nothing finished in the window, the "
                                       "default rate stands in")
    workers_needed: int = Field(ge=0)
    dominant: str = Field(description="idle, running, backlog or deadline: the term "
                                      "that decided workers_needed")
    running_term: int = Field(ge=0)
    backlog_term: int = Field(ge=0)
    deadline_term: int = Field(ge=0)
    why: str


class ScaleReport(Contract):
    """Every model's scaling signal at one moment."""

    taken_at: datetime
    target_s: float = Field(ge=0, description="every queued job should start within this")
    window_s: float = Field(gt=0, description="throughput measured over jobs finished "
                                              "in this many seconds")
    models: list[ModelScale]
