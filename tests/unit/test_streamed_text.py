"""Streamed text: the incremental detokeniser against decoding all ids at once, and the
engine's per-request text pieces against its own completions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from workers.engines.base import EngineRequest, EngineSampling
from workers.engines.detokenize import REPLACEMENT, IncrementalDetokenizer
from workers.engines.transformers import BatchingOptions, TransformersEngine

# Text that is mostly characters of two to four UTF-8 bytes, which the demo's
# byte-level tokenizer splits across tokens, with some ASCII and spaces between, and
# any character UTF-8 can carry (a lone surrogate is not text a caller can send).
WIDE = st.sampled_from("éüßøπж中文日本語한국😀🎉€…—")
TEXT = st.lists(st.one_of(WIDE, st.sampled_from("ab z.,"), st.characters(codec="utf-8")),
                min_size=1, max_size=60).map("".join)


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(demo_model_dir)


def _pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    return [detokenizer.push(token) for token in ids] + [detokenizer.flush()]


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_pieces_join_up_to_decoding_all_ids_and_never_split_a_character(
        tokenizer: Any, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text.encode()) // 4  # characters did span tokens
    pieces = _pieces(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any(REPLACEMENT in piece for piece in pieces) or REPLACEMENT in text


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_ids_even_stray_bytes_and_specials_join_up_to_the_whole_decode(
        tokenizer: Any, data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), min_size=1, max_size=40))
    assert "".join(_pieces(tokenizer, ids)) == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.fixture
def engine(demo_model_dir: Path) -> Iterator[TransformersEngine]:
    engine = TransformersEngine("tiny", str(demo_model_dir), BatchingOptions())
    engine.load()
    yield engine
    engine.unload()


def test_each_request_of_a_batch_streams_exactly_its_completion_stop_strings_cut(
        engine: TransformersEngine) -> None:
    prompts = ["the queue", "a worker decodes", "prefix cache hits", "the queue"]
    [free] = engine.generate([EngineRequest(EngineSampling(max_tokens=24), prompt=prompts[0])])
    # Stop strings taken from the middle of a free run: the text that begins one is
    # decoded before the stop string is whole, and must not be streamed.
    stops = (free.text[8:11], free.text[12:17])
    pieces: list[list[str]] = [[] for _ in prompts]
    requests = [EngineRequest(EngineSampling(max_tokens=24, stop=stops if i % 2 else ()),
                              prompt=prompt, on_text=pieces[i].append)
                for i, prompt in enumerate(prompts)]
    done = engine.generate(requests)  # one batch: the pieces of four requests interleave
    for completion, streamed in zip(done, pieces, strict=True):
        assert "".join(streamed) == completion.text
        assert all(streamed)  # no empty piece is sent
    assert done[0].text == free.text and len(pieces[0]) > 1  # streamed, not sent at the end
    # The same prompt with the stop strings: cut before the first (the spec of stop).
    assert done[3].text == free.text[:min(free.text.find(s) for s in stops)]
    assert len(done[3].text) < len(free.text)
    # Batched or alone, a request streams the same text.
    alone: list[str] = []
    [solo] = engine.generate([EngineRequest(EngineSampling(max_tokens=24, stop=stops),
                                            prompt=prompts[1], on_text=alone.append)])
    assert "".join(alone) == solo.text == done[1].text
