"""OpenAI's Batch and File objects: what the API answers for a batch or an uploaded file,
what `llmos batch --json` prints, and the data of a batch's webhook event.

They live below the API because the batch service builds them (its webhook event
carries a Batch too); the routes declare them as their response models. Fields keep
OpenAI's names and the order of the JSON; times are Unix seconds, as OpenAI has them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmos_jobs.db.batch_tables import StoredFile
from llmos_jobs.states import BatchStatus


def unix_seconds(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


class OpenAIObject(BaseModel):
    # A field with a default ("object") is still in every answer: the response schema
    # says so, as OpenAI's does, instead of marking it optional.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class BatchError(BaseModel):
    """Why a whole batch failed; a line's own error goes to the batch's error file."""

    code: str
    message: str


class BatchErrors(OpenAIObject):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int = Field(description="lines of the input file that hold a request")
    completed: int = Field(description="requests that succeeded")
    failed: int = Field(description="requests that failed or were cancelled, and invalid "
                                    "lines")


class BatchObject(OpenAIObject):
    """A batch as OpenAI's Batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None


class FileObject(OpenAIObject):
    """An uploaded batch input file, or a batch's output or error file, as OpenAI's File
    object (without its content: that is GET /v1/files/{id}/content)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    # Stored whole when uploaded: a file is never in OpenAI's "uploaded" state here.
    status: Literal["processed"] = "processed"

    @classmethod
    def from_row(cls, row: StoredFile) -> FileObject:
        return cls(id=row.id, bytes=row.bytes, created_at=int(row.created_at.timestamp()),
                   filename=row.filename, purpose=row.purpose)
