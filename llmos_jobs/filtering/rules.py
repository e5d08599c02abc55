"""A tenant's rules compiled once and applied to a text: block, then redact.

Blocking looks at the normalised text before redaction, so that a blocked word hidden
inside an e-mail address still counts. Nothing here logs or keeps the text it matched:
a verdict names rules, and carries only the text that may be stored."""

from __future__ import annotations

import re
from dataclasses import dataclass

from stdnum import luhn

from llmos_jobs.filtering.normalise import normalize
from schemas.filters import BlockRule, Direction, FilterVerdict, RedactionRule, TenantFilters


def luhn_valid(digits: str) -> bool:
    """Whether a run of digits passes the Luhn check (python-stdnum's)."""
    return digits.isdigit() and luhn.is_valid(digits)


@dataclass(frozen=True)
class _Redaction:
    rule: RedactionRule
    regex: re.Pattern[str]

    def apply(self, text: str) -> tuple[str, bool]:
        hit = False

        def replace(match: re.Match[str]) -> str:
            nonlocal hit
            if self.rule.luhn and not luhn_valid(re.sub(r"\D", "", match.group(0))):
                return match.group(0)
            hit = True
            return self.rule.replacement

        return self.regex.sub(replace, text), hit


@dataclass(frozen=True)
class _Block:
    rule: BlockRule
    regexes: tuple[re.Pattern[str], ...]

    def matches(self, text: str) -> bool:
        return any(r.search(text) for r in self.regexes)


def _block_regexes(rule: BlockRule) -> tuple[re.Pattern[str], ...]:
    found = []
    if rule.words:
        words = "|".join(re.escape(w.strip()) for w in sorted(rule.words, key=len, reverse=True))
        found.append(re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE))
    if rule.pattern is not None:
        found.append(re.compile(rule.pattern))
    return tuple(found)


class CompiledFilters:
    """The rules of one tenant, ready to screen texts of either side."""

    def __init__(self, filters: TenantFilters) -> None:
        self.filters = filters
        self._redactions = [_Redaction(r, re.compile(r.pattern)) for r in filters.redact]
        self._blocks = [_Block(r, _block_regexes(r)) for r in filters.block]

    def screen(self, text: str, side: Direction) -> FilterVerdict:
        """``text`` as the rules of ``side`` leave it, and which rules acted on it.
        A blocked text comes back empty: what it said must not be stored."""
        if side == Direction.input and self.filters.normalize:
            text = normalize(text)
        for block in self._blocks:
            if block.rule.direction.covers(side) and block.matches(text):
                return FilterVerdict(text="", blocked_by=block.rule.name)
        redacted_by = []
        for redaction in self._redactions:
            if redaction.rule.direction.covers(side):
                text, hit = redaction.apply(text)
                if hit:
                    redacted_by.append(redaction.rule.name)
        return FilterVerdict(text=text, redacted_by=redacted_by)
