"""A job's content filters as the worker applies them: its tenant's rules on the
input before the engine runs, and on the output before the result is stored; the
moderation step runs its classifier model on this worker's engine pool.

Why here and not at submission: ``llmos_jobs.services.filters``."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmos_jobs.db.filters import get_filters
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import Job
from llmos_jobs.filtering.rules import CompiledFilters
from llmos_jobs.services.filters import ContentFiltered
from schemas.common import ChatMessage
from schemas.filters import Direction, ModerationRule

# Runs the moderation model on a text: its greedy output.
Classify = Callable[[ModerationRule, str], str]


@dataclass(frozen=True)
class JobFilters:
    """The rules of one job's tenant, read when the job starts."""

    compiled: CompiledFilters
    classify: Classify
    # The redaction rules that changed a text of the job so far, in order.
    redacted: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, job: Job, database: Database, classify: Classify) -> JobFilters:
        with database.session() as session:
            filters = get_filters(session=session, tenant=job.tenant)
        return cls(CompiledFilters(filters), classify)

    @property
    def screens_output(self) -> bool:
        """Whether any rule acts on the output: then no output leaves unscreened (the
        job's text is not streamed while it is decoded)."""
        filters = self.compiled.filters
        directions = ([rule.direction for rule in filters.redact]
                      + [rule.direction for rule in filters.block])
        if filters.moderation is not None:
            directions.append(filters.moderation.direction)
        return any(d.covers(Direction.output) for d in directions)

    def text(self, text: str, side: Direction) -> str:
        """``text`` screened on ``side``, the moderation step included; raises
        ContentFiltered when a rule blocks it."""
        screened = self._rules(text, side)
        self._moderate([screened], side)
        return screened

    def texts(self, texts: Sequence[str], side: Direction) -> list[str]:
        """Several texts of one request screened on ``side``, each one; the moderation
        step sees them all at once."""
        screened = [self._rules(text, side) for text in texts]
        self._moderate(screened, side)
        return screened

    def messages(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """Chat messages screened as input (``texts``)."""
        contents = self.texts([m.content for m in messages], Direction.input)
        return [message.model_copy(update={"content": content})
                for message, content in zip(messages, contents, strict=True)]

    def _rules(self, text: str, side: Direction) -> str:
        verdict = self.compiled.screen(text, side)
        if verdict.blocked_by is not None:
            raise ContentFiltered(verdict.blocked_by, side)
        self.redacted.extend(r for r in verdict.redacted_by if r not in self.redacted)
        return verdict.text

    def _moderate(self, texts: Sequence[str], side: Direction) -> None:
        rule = self.compiled.filters.moderation
        if rule is None or not rule.direction.covers(side):
            return
        verdict = self.classify(rule, "\n".join(texts))
        if re.search(rule.block_when, verdict):
            raise ContentFiltered(rule.name, side, how="moderation step")
