"""What a retention run did (or, dry, would do): the result of the control task
``llmos.control.prune`` and of `llmos prune --json`."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.common import Contract


class PruneCounts(Contract):
    jobs: int = Field(ge=0, description="finished jobs whose prompt, result and error "
                                        "text were removed (their metadata stays)")
    files: int = Field(ge=0, description="uploaded files and batch output/error files deleted")
    audit: int = Field(ge=0, description="audit rows deleted")
    webhooks: int = Field(ge=0, description="finished webhook deliveries deleted, with "
                                            "their attempts")
    idempotency_keys: int = Field(ge=0, description="idempotency keys past their 24 h")


class PruneReport(Contract):
    version: int = 1
    dry_run: bool
    tenant: str | None = Field(default=None, description="only this tenant's content")
    at: datetime = Field(description="the moment ages were measured from")
    counts: PruneCounts
