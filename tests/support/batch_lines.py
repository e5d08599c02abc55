"""Lines of a batch input file (JSONL), as a caller writes them."""

from __future__ import annotations

import json


def request_line(custom_id: str, model: str, text: str = "hi") -> str:
    """One chat completion request of ``model``, non-ASCII kept as written."""
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "max_tokens": 2,
                                "messages": [{"role": "user", "content": text}]}},
                      ensure_ascii=False)
