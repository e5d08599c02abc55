"""What a job kind tells the graph machinery (llmos_jobs.services.graphs) about itself:
how much input text one job of it can take, the payload of a job over a piece of text,
the text of its result, and how results are joined for the next level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from llmos_jobs.services.tokenizers import ModelText
from schemas.common import JobKind


class GraphPlan(Protocol):
    def text_of(self, payload: dict[str, Any]) -> str:
        """The input text of a job of this kind."""

    def budget(self, payload: dict[str, Any], model: ModelText) -> int:
        """How many tokens of input text one job with ``payload``'s options can take:
        the context less the prompt around the text and the tokens it may generate."""

    def part(self, payload: dict[str, Any], text: str) -> dict[str, Any]:
        """The payload of a child job over ``text``, with the parent's options."""

    def output(self, result: dict[str, Any]) -> str:
        """The text of a child's result, for the next level's input."""

    def join(self, outputs: Sequence[str]) -> str:
        """The outputs of one level, in order, as the next level's input text."""


PLANS: dict[JobKind, GraphPlan] = {}
