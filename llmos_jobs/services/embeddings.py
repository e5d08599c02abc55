"""Sentence embeddings for ``/v1/embeddings``, with the all-MiniLM-L6-v2 model the
knowledge base already ships (llmos_jobs.services.knowledge).

They run in the calling process, not as a job through a worker: the model is small
(22M parameters, 384 dimensions; one short text in ~30 ms on a loaded CPU core,
`python -m bench.embeddings`), so the queue's round trip (commit, publish, claim,
record, poll) would cost about as much as the work;
the API process loads it anyway for knowledge uploads, and inference workers, which
hold language models and may have no copy of it, stay free for generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.knowledge import MAX_TOKENS, embedder

MODEL = "all-MiniLM-L6-v2"
ALIASES = frozenset({MODEL, f"sentence-transformers/{MODEL}"})
DIMENSIONS = 384
MAX_INPUTS = 2048  # OpenAI's own limit per request
BATCH = 64  # texts per forward pass: bounds the memory of one large request


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray[Any, np.dtype[np.float32]]  # one unit vector per input, in order
    prompt_tokens: int


def check_model(model: str) -> str:
    if model not in ALIASES:
        raise InvalidRequest(f"model '{model}' has no embeddings here; the embedding model "
                             f"is '{MODEL}'")
    return MODEL


def embed(texts: Sequence[str], *, model: str) -> Embeddings:
    """Embed ``texts``; an empty text, or one longer than the model reads, is refused
    by its index (nothing is cut silently)."""
    check_model(model)
    if not texts:
        raise InvalidRequest("input: give a string or a non-empty list of strings")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"input: {len(texts)} texts; at most {MAX_INPUTS} per request")
    for index, text in enumerate(texts):
        if not text:
            raise InvalidRequest(f"input[{index}]: an empty string cannot be embedded")
    model_ = embedder()
    counts = model_.token_counts(texts)
    for index, count in enumerate(counts):
        if count > MAX_TOKENS:
            raise InvalidRequest(f"input[{index}]: {count} tokens; {MODEL} reads at most "
                                 f"{MAX_TOKENS} (split the text)")
    vectors = np.concatenate([model_.embed(texts[i:i + BATCH])
                              for i in range(0, len(texts), BATCH)])
    return Embeddings(vectors=vectors, prompt_tokens=sum(counts))
