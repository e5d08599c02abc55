"""A registered model's own tokenizer, for the processes that split text for it
without running it (a producer planning a job graph, the control process advancing
one): loaded from the model's directory on first use, kept per directory."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmos_jobs.chunking import Offsets
from llmos_jobs.db import versions
from llmos_jobs.db.session import Database
from llmos_jobs.errors import InvalidRequest

_lock = threading.Lock()
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelText:
    """What splitting text for a model needs: its context and its tokenizer."""

    model: str
    context_length: int
    tokenizer: Any

    def offsets(self, text: str) -> Offsets:
        """Where each of the model's tokens of ``text`` lies in it (no special tokens)."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"]]

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])


@lru_cache(maxsize=16)
def _load(path: str) -> Any:
    from transformers import AutoTokenizer

    # Texts longer than the model's context are what it is loaded to measure: no
    # warning about their length.
    return AutoTokenizer.from_pretrained(path, model_max_length=10**9)


def model_text(database: Database, model: str) -> ModelText:
    """``model``'s context and tokenizer, or InvalidRequest saying why there is none."""
    with database.session() as session:
        row = versions.resolve(session=session, model=model)
    directory = Path(row.path)
    # A remote server's model, or one without tokenizer files: told without a load.
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidRequest(f"model {model!r} has no tokenizer in {row.path} to split "
                             "a long text with")
    try:
        with _lock:
            tokenizer = _load(row.path)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            f"model {model!r} has no tokenizer in {row.path} to split a long text with "
            f"({type(exc).__name__})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidRequest(f"model {model!r}'s tokenizer cannot tell where its tokens lie "
                             "in a text (it is not a fast tokenizer)")
    return ModelText(model, row.context_length, tokenizer)
