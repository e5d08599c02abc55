"""/v1/files: OpenAI-compatible file upload (purpose "batch") and download."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.batch_tables import StoredFile
from llmos_jobs.services import batch_files
from llmos_jobs.services.api_keys import Scope

router = APIRouter(prefix="/v1/files", tags=["openai"])
State = Annotated[ApiState, Depends(api_state)]


def file_object(row: StoredFile) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes,
            "created_at": int(row.created_at.timestamp()), "filename": row.filename,
            "purpose": row.purpose, "status": "processed"}


@router.post("")
async def upload_file(
    state: State, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()],
    caller: Annotated[Caller, Depends(authorize("files.create", Scope.jobs_write))],
) -> dict[str, Any]:
    """Upload a JSONL batch input file."""
    limit = state.settings.batch_max_bytes
    content = await file.read(limit + 1)
    row = await run_in_threadpool(state.client(caller.tenant).upload_file,
                                  filename=file.filename or "upload.jsonl", content=content,
                                  purpose=purpose)
    caller.created(row.id)
    return file_object(row)


@router.get("/{file_id}")
def get_file(file_id: str, state: State,
             caller: Annotated[Caller, Depends(authorize("files.read", Scope.jobs_read))],
             ) -> dict[str, Any]:
    client = state.client(caller.tenant)
    with client.session() as session:
        return file_object(batch_files.get_file(session, caller.tenant, file_id, content=False))


# Errors stay JSON like every route's: only the 200 answer is JSON Lines text.
@router.get("/{file_id}/content", response_model=None, responses={
    200: {"description": "the file's lines", "content": {
        "application/jsonl": {"schema": {"type": "string"}}}}})
def get_file_content(file_id: str, state: State,
                     caller: Annotated[Caller, Depends(authorize("files.read", Scope.jobs_read))],
                     ) -> PlainTextResponse:
    client = state.client(caller.tenant)
    with client.session() as session:
        row = batch_files.get_file(session, caller.tenant, file_id)
    return PlainTextResponse(row.content, media_type="application/jsonl")
