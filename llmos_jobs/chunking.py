"""Splitting a long text into chunks that each fit a model's context: windows of at
most ``size`` tokens, each overlapping the one before by ``overlap`` tokens, so that a
sentence cut at one window's end is read whole at the next one's start.

Windows are counted in the model's own tokens and cut where its tokenizer's tokens
begin and end, so a chunk is an exact slice of the text (no token is split, no
character lost or invented)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Where each token of a text begins and ends in it, in characters (a fast tokenizer's
# ``return_offsets_mapping``).
Offsets = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Chunk:
    index: int
    first_token: int
    end_token: int  # exclusive
    start: int  # where ``text`` lies in the whole, in characters
    end: int
    text: str


def windows(tokens: int, size: int, overlap: int) -> list[range]:
    """Token windows over ``tokens`` tokens: each at most ``size`` long, each starting
    ``overlap`` tokens before the previous one ends, together covering every token. One
    window (possibly empty) when all fit."""
    if size < 1:
        raise ValueError(f"a chunk must hold at least one token (size {size})")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be at least 0 and less than the chunk "
                         f"size {size}")
    if tokens <= size:
        return [range(0, tokens)]
    found = []
    start = 0
    while True:
        end = min(start + size, tokens)
        found.append(range(start, end))
        if end == tokens:
            return found
        start = end - overlap


def split(text: str, offsets: Offsets, *, size: int, overlap: int) -> list[Chunk]:
    """``text`` as chunks of at most ``size`` of its tokens (``offsets``: where each
    token lies in it), overlapping by ``overlap`` tokens."""
    spans = [(start, end) for start, end in offsets if end > start]
    chunks = []
    for index, window in enumerate(windows(len(spans), size, overlap)):
        if not window:
            return [Chunk(0, 0, 0, 0, len(text), text)]
        # From the end of the token before: what lies between two tokens is kept too.
        begin = 0 if window.start == 0 else spans[window.start - 1][1]
        finish = len(text) if window.stop == len(spans) else spans[window.stop - 1][1]
        chunks.append(Chunk(index, window.start, window.stop, begin, finish,
                            text[begin:finish]))
    return chunks


def fitting(text: str, offsets_of: Callable[[str], Offsets], *, size: int, overlap: int
            ) -> list[Chunk]:
    """``split`` with the tokenizer ``offsets_of``, checked: a slice of a text can
    tokenize into more tokens than it held in the whole (a merge across its edge is
    undone), so a chunk that does not fit ``size`` when tokenized alone makes the split
    run again with windows smaller by what it overflowed."""
    offsets = offsets_of(text)
    window = size
    while True:
        chunks = split(text, offsets, size=window, overlap=min(overlap, window - 1))
        worst = max(len(offsets_of(c.text)) for c in chunks)
        if worst <= size:
            return chunks
        window -= max(worst - size, 1)
        if window < 1:
            raise ValueError(f"the text cannot be cut into chunks of {size} tokens")
