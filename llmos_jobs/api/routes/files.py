"""/v1/files: OpenAI-compatible file upload (purpose "batch") and download."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.services import batch_files
from llmos_jobs.services.api_keys import Scope
from llmos_jobs.services.batch_objects import FileObject

router = APIRouter(prefix="/v1/files", tags=["openai"])
State = Annotated[ApiState, Depends(api_state)]


@router.post("", response_model=FileObject)
async def upload_file(
    state: State, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()],
    caller: Annotated[Caller, Depends(authorize("files.create", Scope.jobs_write))],
) -> FileObject:
    """Upload a JSONL batch input file."""
    limit = state.settings.batch_max_bytes
    content = await file.read(limit + 1)
    row = await run_in_threadpool(state.client(caller.tenant).upload_file,
                                  filename=file.filename or "upload.jsonl", content=content,
                                  purpose=purpose)
    caller.created(row.id)
    return FileObject.from_row(row)


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, state: State,
             caller: Annotated[Caller, Depends(authorize("files.read", Scope.jobs_read))],
             ) -> FileObject:
    client = state.client(caller.tenant)
    with client.session() as session:
        return FileObject.from_row(
            batch_files.get_file(session, caller.tenant, file_id, content=False))


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
