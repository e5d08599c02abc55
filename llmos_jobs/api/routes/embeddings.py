"""POST /v1/embeddings: OpenAI's embeddings, computed in the API process (why:
llmos_jobs.services.embeddings)."""

from __future__ import annotations

import base64
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.openai_schemas import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.services.api_keys import Scope

router = APIRouter(tags=["openai"])


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def create_embeddings(
    body: EmbeddingRequest, state: Annotated[ApiState, Depends(api_state)],
    caller: Annotated[Caller, Depends(authorize("embeddings.create", Scope.jobs_write))],
) -> EmbeddingList:
    """Embed a text or a list of texts: unit vectors of 384 floats, as a list of
    numbers or (``encoding_format: base64``) the base64 of their float32 bytes."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    client = state.client(caller.tenant)
    result = await run_in_threadpool(partial(client.embed, texts, model=body.model))
    data = [Embedding(index=i, embedding=(
        base64.b64encode(vector.astype("<f4").tobytes()).decode()
        if body.encoding_format == "base64" else [float(x) for x in vector]))
        for i, vector in enumerate(result.vectors)]
    return EmbeddingList(data=data, model=body.model,
                         usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens,
                                              total_tokens=result.prompt_tokens))
