"""The chunker of job graphs (llmos_jobs.chunking): generated token counts, sizes,
overlaps and token layouts; and real text through the demo model's own tokenizer."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer

from llmos_jobs.chunking import Chunk, Offsets, fitting, split, windows
from llmos_jobs.demo_model import _WORDS


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.integers(min_value=1, max_value=200))
    overlap = draw(st.integers(min_value=0, max_value=size - 1))
    tokens = draw(st.integers(min_value=0, max_value=3000))
    return tokens, size, overlap


@given(layouts())
def test_windows_cover_every_token_fit_and_overlap_as_asked(layout: tuple[int, int, int]
                                                            ) -> None:
    tokens, size, overlap = layout
    found = windows(tokens, size, overlap)
    assert {t for w in found for t in w} == set(range(tokens))  # every token, no other
    assert all(len(w) <= size for w in found)
    assert found[0].start == 0 and found[-1].stop == tokens
    for before, after in itertools.pairwise(found):
        assert before.stop - after.start == overlap  # exactly the overlap asked
        assert len(before) == size  # only the last window may be short
    # As few windows as those rules allow.
    expected = 1 if tokens <= size else 1 + -(-(tokens - size) // (size - overlap))
    assert len(found) == expected


def _check_slices(text: str, offsets: Offsets, chunks: list[Chunk], overlap: int) -> None:
    """Each chunk is the text between its tokens; together they lose no character; the
    overlap is the text of exactly ``overlap`` tokens."""
    spans = [(a, b) for a, b in offsets if b > a]
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for chunk in chunks:
        assert chunk.text == text[chunk.start:chunk.end]
    for before, after in itertools.pairwise(chunks):
        assert after.start <= before.end  # no gap: every character is in a chunk
        assert before.end_token - after.first_token == overlap
        # The shared text holds the shared tokens, and no other whole token.
        shared = [s for s in spans if after.start <= s[0] and s[1] <= before.end]
        assert len(shared) == overlap


@given(st.text(max_size=400), st.integers(1, 40), st.data())
def test_chunks_are_slices_that_lose_no_character(text: str, size: int, data: st.DataObject
                                                  ) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    # Tokens of one to three characters, with gaps (characters a tokenizer drops).
    offsets: list[tuple[int, int]] = []
    at = 0
    while at < len(text):
        start = min(at + data.draw(st.integers(0, 1)), len(text))
        end = min(start + data.draw(st.integers(1, 3)), len(text))
        if end > start:
            offsets.append((start, end))
        at = max(end, at + 1)
    chunks = split(text, offsets, size=size, overlap=overlap)
    assert all(c.end_token - c.first_token <= size for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    _check_slices(text, offsets, chunks, overlap)


@pytest.mark.parametrize(("size", "overlap"), [(64, 0), (200, 50), (1900, 64)])
def test_real_text_through_the_demo_tokenizer(demo_model_dir: Path, size: int, overlap: int
                                              ) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    rng = random.Random(size)
    text = " ".join(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) + "."
                    for _ in range(700))

    def offsets(piece: str) -> list[tuple[int, int]]:
        encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        return [(a, b) for a, b in encoded["offset_mapping"]]

    whole = offsets(text)
    chunks = fitting(text, offsets, size=size, overlap=overlap)
    assert len(chunks) == len(windows(len(whole), size, overlap)) > 1
    assert all(len(offsets(c.text)) <= size for c in chunks)  # fits, tokenized alone
    _check_slices(text, whole, chunks, overlap)


def test_a_chunk_that_grows_when_tokenized_alone_makes_the_windows_smaller() -> None:
    # A toy tokenizer: a chunk's first token, cut from its word, counts double.
    text = "abcdefghij" * 10

    def offsets(piece: str) -> list[tuple[int, int]]:
        ones = [(i, i + 1) for i in range(len(piece))]
        return ones if piece == text else [(0, 1), *ones]

    chunks = fitting(text, offsets, size=10, overlap=2)
    assert all(len(offsets(c.text)) <= 10 for c in chunks)
    assert chunks[0].end_token - chunks[0].first_token == 9


def test_bad_sizes_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        windows(10, 0, 0)
    with pytest.raises(ValueError, match="overlap 5 must be"):
        windows(10, 5, 5)
