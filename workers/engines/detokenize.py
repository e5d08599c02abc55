"""Text out of a growing list of token ids, one piece per new token, that joins up to
exactly what decoding all of them at once gives.

Decoding each token alone is wrong twice over: a character of several UTF-8 bytes can
span tokens (each half decodes to U+FFFD), and some tokenizers render a token
differently by what precedes it (a leading space). The incremental approach of the
serving engines (vLLM, TGI) decodes a short window, the tokens since the last piece
plus the previous piece as context, and emits only the text past that context, and
only once it does not end in U+FFFD: the bytes of a character still arriving stay
back until it is whole."""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        # ids[_prefix:_read] were emitted last, and give the context; ids[_read:] wait.
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=self._skip))

    def _pending(self) -> str:
        context = self._decode(self.ids[self._prefix:self._read])
        window = self._decode(self.ids[self._prefix:])
        return window[len(context):] if window.startswith(context) else ""

    def push(self, token: int) -> str:
        """The text ``token`` makes stable ("" while a character is incomplete)."""
        self.ids.append(token)
        piece = self._pending()
        if not piece or piece.endswith(REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return piece

    def flush(self) -> str:
        """Whatever is held back, as it decodes now (the ids ended)."""
        piece = self._pending()
        self._prefix = self._read = len(self.ids)
        return piece
