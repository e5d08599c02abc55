"""Where models registered over the HTTP API may live.

A model path names a directory on the API server's machine, which the server then
reads (its config, later its weights). Confined to the operator's model roots, a path
cannot be used to probe the rest of that machine: the answer for a path outside the
roots is the same whether it exists or not. The CLI and the Python client run on the
machine already and are not confined."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llmos_jobs.errors import InvalidRequest


def confine(path: str, roots: Sequence[Path]) -> Path:
    """``path`` resolved (symbolic links followed) when it lies under one of ``roots``."""
    named = ", ".join(str(r) for r in roots)
    given = Path(path)
    if not given.is_absolute():
        raise InvalidRequest(f"model path {path!r} must be absolute and lie under a model "
                             f"root (LLMOS_MODEL_ROOTS: {named})")
    # Resolving before comparing: '..' and links that lead out of a root are refused too.
    resolved = given.resolve()
    if any(resolved.is_relative_to(root.resolve()) for root in roots):
        return resolved
    raise InvalidRequest(f"model path {path!r} is not under a model root "
                         f"(LLMOS_MODEL_ROOTS: {named})")
