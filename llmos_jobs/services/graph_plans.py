"""What a job kind tells the graph machinery (llmos_jobs.services.graphs) about itself:
how much input text one job of it can take, the payload of a job over a piece of text,
the text of its result, and how results are joined for the next level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from llmos_jobs.db import registry, versions
from llmos_jobs.db.session import Database
from llmos_jobs.prompt_templates import DEFAULT_FAMILY, render_preset
from llmos_jobs.services.tokenizers import ModelText
from schemas.common import JobKind
from schemas.tasks import SummariseRequest, SummariseResult

# Tokens kept free besides the prompt's own and the output's: the text, cut from its
# neighbours and put into the template, can tokenize a little differently at its edges.
EDGE_TOKENS = 8


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


class SummarisePlan:
    """summarise: each chunk is summarised with the request's options; then the joined
    partial summaries are, again chunked while they do not fit."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def text_of(self, payload: dict[str, Any]) -> str:
        return SummariseRequest.model_validate(payload).text

    def budget(self, payload: dict[str, Any], model: ModelText) -> int:
        request = SummariseRequest.model_validate(payload)
        with self.database.session() as session:
            path = versions.resolve(session=session, model=request.model).path
        family = registry.model_type_of(path) or DEFAULT_FAMILY
        # The prompt around an empty text: what every chunk's prompt adds to it.
        around = model.count(render_preset(request.model_copy(update={"text": ""}),
                                           JobKind.summarise.value, family))
        return model.context_length - request.max_tokens - around - EDGE_TOKENS

    def part(self, payload: dict[str, Any], text: str) -> dict[str, Any]:
        return {**payload, "text": text}

    def output(self, result: dict[str, Any]) -> str:
        return SummariseResult.model_validate(result).summary

    def join(self, outputs: Sequence[str]) -> str:
        return "\n\n".join(outputs)


def plans(database: Database) -> dict[JobKind, GraphPlan]:
    """The kinds a long input may be split for, each with its plan."""
    return {JobKind.summarise: SummarisePlan(database)}
