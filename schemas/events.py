"""A job's live events, as its stream holds them and the events route sends them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Contract, JobStatus


class JobEvent(Contract):
    """``status``: the job reached ``status`` (``running``, then a final one);
    ``delta``: the next piece of the output text. The deltas of a job, joined, are its
    text; the last event of a job that ended is its final status."""

    version: Literal[1] = 1
    type: Literal["status", "delta"]
    status: JobStatus | None = Field(default=None, description="with type status")
    text: str | None = Field(default=None, description="with type delta")

    @classmethod
    def delta(cls, text: str) -> JobEvent:
        return cls(type="delta", text=text)

    @classmethod
    def of_status(cls, status: JobStatus) -> JobEvent:
        return cls(type="status", status=status)

    @property
    def is_final(self) -> bool:
        return self.type == "status" and self.status is not None and self.status.is_final
