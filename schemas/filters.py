"""Content filters of a tenant: input normalisation, redaction rules, block rules and
an optional moderation step, applied to every language job (``docs/filters.md``).

A rule that blocks ends the job ``filtered`` and is named on the job; the text it
matched is never recorded."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from schemas.common import Contract

RuleName = str
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class Direction(StrEnum):
    """Which side of a job a rule applies to: the request, the output, or both."""

    input = "in"
    output = "out"
    both = "both"

    def covers(self, side: Direction) -> bool:
        return self == Direction.both or self == side


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return pattern


class RedactionRule(Contract):
    """Every match of ``pattern`` is replaced by ``replacement``; with ``luhn``, only
    matches whose digits pass the Luhn check (card numbers)."""

    name: RuleName = Field(pattern=NAME_PATTERN)
    pattern: str = Field(min_length=1, max_length=2000,
                         description="a Python regular expression")
    replacement: str = Field(default="[REDACTED]", max_length=200)
    direction: Direction = Direction.both
    luhn: bool = Field(default=False, description="redact only digit runs passing Luhn")

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        return _compiles(value)


class BlockRule(Contract):
    """A text holding one of ``words`` (whole words, any case) or matching ``pattern``
    ends the job ``filtered``."""

    name: RuleName = Field(pattern=NAME_PATTERN)
    words: list[str] = Field(default_factory=list, max_length=10_000)
    pattern: str | None = Field(default=None, min_length=1, max_length=2000)
    direction: Direction = Direction.both

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        return None if value is None else _compiles(value)

    @model_validator(mode="after")
    def _something_to_match(self) -> Self:
        if not self.words and self.pattern is None:
            raise ValueError(f"block rule {self.name!r} needs 'words' or 'pattern'")
        if any(not w.strip() for w in self.words):
            raise ValueError(f"block rule {self.name!r} has an empty word")
        return self


class ModerationRule(Contract):
    """A classifier model, registered like any other, run on the text as a step: the
    job ends ``filtered`` when the model's output matches ``block_when``."""

    name: RuleName = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1)
    block_when: str = Field(min_length=1, max_length=2000,
                            description="a regular expression searched in the output")
    direction: Direction = Direction.input
    max_tokens: int = Field(default=8, gt=0, le=256)

    @field_validator("block_when")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        return _compiles(value)


class TenantFilters(Contract):
    """What a tenant's language jobs go through. The default: normalisation only."""

    version: Literal[1] = 1
    normalize: bool = Field(
        default=True,
        description="input: Unicode NFC, control characters removed, runs of spaces "
                    "and tabs collapsed to one space")
    redact: list[RedactionRule] = Field(default_factory=list, max_length=200)
    block: list[BlockRule] = Field(default_factory=list, max_length=200)
    moderation: ModerationRule | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [r.name for r in self.redact] + [r.name for r in self.block]
        if self.moderation is not None:
            names.append(self.moderation.name)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(repeated)}")
        return self


class FilterVerdict(Contract):
    """What the filters made of one text (``llmos tenant filters test``)."""

    text: str = Field(description="the text after normalisation and redaction")
    redacted_by: list[RuleName] = Field(default_factory=list)
    blocked_by: RuleName | None = None
