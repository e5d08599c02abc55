"""Content filters as plain functions: normalisation against ``unicodedata``, the Luhn
check against published test card numbers, the built-in PII rules, block rules, the
moderation step, and the contracts' refusals."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmos_jobs.errors import InvalidRequest
from llmos_jobs.filtering import pii
from llmos_jobs.filtering.normalise import normalize
from llmos_jobs.filtering.rules import CompiledFilters, luhn_valid
from llmos_jobs.services.filters import ContentFiltered, with_pii
from llmos_jobs.services.submission import validate
from llmos_jobs.states import JOBS
from schemas.common import ChatMessage, JobStatus
from schemas.filters import BlockRule, Direction, ModerationRule, TenantFilters
from workers.filtering import JobFilters

# Test numbers the card networks publish for payment sandboxes: each passes Luhn.
TEST_CARDS = ["4111111111111111", "4012888888881881", "5555555555554444",
              "5105105105105100", "378282246310005", "371449635398431",
              "6011111111111117", "30569309025904", "3530111333300000", "4222222222222"]

# Text without control characters or whitespace: normalisation is NFC alone.
plain_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")))


@given(plain_text)
def test_normalisation_of_plain_text_is_nfc(text: str) -> None:
    assert normalize(text) == unicodedata.normalize("NFC", text)


@given(st.text())
def test_normalised_text_is_nfc_without_controls_or_runs_of_spaces(text: str) -> None:
    out = normalize(text)
    assert unicodedata.is_normalized("NFC", out)
    assert all(c == "\n" or unicodedata.category(c) != "Cc" for c in out)
    assert "  " not in out and "\t" not in out and " \n" not in out
    assert normalize(out) == out  # a second pass changes nothing


def test_normalisation_examples() -> None:
    decomposed = "cafe\u0301"  # e + combining acute accent
    assert normalize(f"{decomposed}\x00 \t  au\x07 lait\r\nnext  \nline") == \
        "caf\u00e9 au lait\nnext\nline"
    # A control character between a letter and its accent goes before composing.
    assert normalize("e\x00\u0301") == "\u00e9"


@pytest.mark.parametrize("number", TEST_CARDS)
def test_published_test_cards_pass_luhn(number: str) -> None:
    assert luhn_valid(number)


@given(st.sampled_from(TEST_CARDS), st.data())
def test_any_single_digit_change_fails_luhn(number: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(number) - 1))
    digit = data.draw(st.sampled_from([d for d in "0123456789" if d != number[index]]))
    assert not luhn_valid(number[:index] + digit + number[index + 1:])


def _pii(*names: str) -> CompiledFilters:
    return CompiledFilters(TenantFilters(redact=[pii.builtin(n) for n in names]))


@pytest.mark.parametrize("number", TEST_CARDS)
@pytest.mark.parametrize("separator", ["", " ", "-"])
def test_card_numbers_are_redacted_with_any_grouping(number: str, separator: str) -> None:
    grouped = separator.join(number[i:i + 4] for i in range(0, len(number), 4))
    verdict = _pii("card").screen(f"pay with {grouped}, thanks", Direction.input)
    assert verdict.text == "pay with [CARD], thanks"
    assert verdict.redacted_by == ["pii.card"]


def test_digit_runs_failing_luhn_are_not_cards() -> None:
    text = "order 4111111111111112 and 1234567890123"
    assert _pii("card").screen(text, Direction.output).text == text


@pytest.mark.parametrize(("text", "expected"), [
    ("write to jane.doe+news@mail.example.co.uk today",
     "write to [EMAIL] today"),
    ("a@b.io, c_d@e-f.org", "[EMAIL], [EMAIL]"),
    ("call +1 415 555 0132 or (555) 123-4567", "call [PHONE] or [PHONE]"),
    ("london: +44 20 7946 0958.", "london: [PHONE]."),
    ("office 030-1234-5678", "office [PHONE]"),
])
def test_emails_and_phones_are_redacted(text: str, expected: str) -> None:
    assert _pii(*pii.names()).screen(text, Direction.input).text == expected


@pytest.mark.parametrize("text", [
    "released 2024-11-30 as v1.2.3", "an @mention and user@localhost",
    "ticket 12345", "pi is 3.14159265", "4111 1111 1111 1112",
])
def test_what_is_not_pii_stays(text: str) -> None:
    verdict = _pii(*pii.names()).screen(text, Direction.input)
    assert verdict.text == text and verdict.redacted_by == []


def test_a_rule_applies_only_to_its_side() -> None:
    filters = CompiledFilters(TenantFilters(
        redact=[pii.builtin("email", Direction.output)],
        block=[BlockRule(name="in-only", words=["launch code"], direction=Direction.input)]))
    assert filters.screen("x@y.io", Direction.input).text == "x@y.io"
    assert filters.screen("x@y.io", Direction.output).text == "[EMAIL]"
    assert filters.screen("the LAUNCH  code", Direction.input).blocked_by == "in-only"
    assert filters.screen("the launch code", Direction.output).blocked_by is None


def test_block_words_match_whole_words_in_any_case_and_patterns_anywhere() -> None:
    filters = CompiledFilters(TenantFilters(block=[
        BlockRule(name="words", words=["class", "top secret"]),
        BlockRule(name="ids", pattern=r"\bPRJ-\d{3}\b")]))
    assert filters.screen("a declassified note", Direction.input).blocked_by is None
    assert filters.screen("CLASS notes", Direction.input).blocked_by == "words"
    assert filters.screen("it is top\tsecret", Direction.input).blocked_by == "words"
    assert filters.screen("see PRJ-042 now", Direction.output).blocked_by == "ids"
    blocked = filters.screen("class", Direction.input)
    assert blocked.text == ""  # a blocked text is not carried on


def test_blocking_sees_the_text_before_redaction() -> None:
    filters = CompiledFilters(TenantFilters(redact=[pii.builtin("email")],
                                            block=[BlockRule(name="w", words=["acme"])]))
    assert filters.screen("mail bob@acme.com", Direction.input).blocked_by == "w"


def test_without_normalisation_the_input_is_kept() -> None:
    filters = CompiledFilters(TenantFilters(normalize=False))
    assert filters.screen("a  b\x07", Direction.input).text == "a  b\x07"
    # Outputs are never normalised: only rules change them.
    assert CompiledFilters(TenantFilters()).screen("a  b", Direction.output).text == "a  b"


def _job_filters(filters: TenantFilters, verdicts: list[str]) -> tuple[JobFilters, list[str]]:
    seen: list[str] = []

    def classify(rule: ModerationRule, text: str) -> str:
        seen.append(text)
        return verdicts.pop(0)

    return JobFilters(CompiledFilters(filters), classify), seen


def test_the_moderation_step_blocks_when_its_output_matches() -> None:
    rule = ModerationRule(name="mod", model="classifier", block_when=r"^\s*unsafe")
    filters, seen = _job_filters(TenantFilters(moderation=rule), [" safe", "unsafe: yes"])
    assert filters.text("hello  there", Direction.input) == "hello there"
    with pytest.raises(ContentFiltered, match="moderation step 'mod'") as blocked:
        filters.messages([ChatMessage(role="system", content="s"),
                          ChatMessage(role="user", content="u")])
    assert blocked.value.rule == "mod" and blocked.value.side == Direction.input
    # The classifier saw the normalised text, and every message of a chat.
    assert seen == ["hello there", "s\nu"]
    # An input-only moderation step does not run on outputs.
    assert filters.text("anything", Direction.output) == "anything"


def test_a_jobs_filters_remember_which_rules_redacted_it() -> None:
    filters, _ = _job_filters(TenantFilters(redact=[pii.builtin("email"),
                                                    pii.builtin("phone")]), [])
    filters.text("a@b.io", Direction.input)
    filters.text("plain", Direction.output)
    filters.text("c@d.io or +1 415 555 0132", Direction.output)
    assert filters.redacted == ["pii.email", "pii.phone"]


def test_a_block_rule_raises_naming_the_rule_not_the_text() -> None:
    filters, _ = _job_filters(TenantFilters(block=[BlockRule(name="b", words=["zebra"])]), [])
    with pytest.raises(ContentFiltered) as blocked:
        filters.text("a zebra", Direction.output)
    assert str(blocked.value) == "output blocked by the content filter rule 'b'"
    assert "zebra" not in str(blocked.value)


@pytest.mark.parametrize(("data", "problem"), [
    ({"block": [{"name": "b", "pattern": "("}]}, "block.0.pattern"),
    ({"block": [{"name": "b"}]}, "needs 'words' or 'pattern'"),
    ({"redact": [{"name": "r", "pattern": "x", "direction": "sideways"}]},
     "redact.0.direction"),
    ({"redact": [{"name": "r", "pattern": "x"}], "block": [{"name": "r", "words": ["y"]}]},
     "repeated: r"),
    ({"moderation": {"name": "m", "model": "c", "block_when": "[a-"}}, "moderation.block_when"),
    ({"blocklist": []}, "blocklist"),
])
def test_bad_rules_are_refused_naming_what_is_wrong(data: dict[str, object],
                                                     problem: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(problem)):
        validate(TenantFilters, data)


def test_builtin_pii_rules_are_named_and_unknown_ones_refused() -> None:
    data = with_pii(TenantFilters(), ["card", "email"], Direction.output)
    assert [r["name"] for r in data["redact"]] == ["pii.card", "pii.email"]
    again = with_pii(TenantFilters.model_validate(data), ["email"], Direction.both)
    assert [r["name"] for r in again["redact"]] == ["pii.card", "pii.email"]
    with pytest.raises(ValueError, match="email, phone"):
        pii.builtin("passport")


def test_filtered_is_final_and_entered_only_from_running() -> None:
    assert JOBS.sources_of(JobStatus.filtered) == {JobStatus.running}
    assert JOBS.is_final(JobStatus.filtered) and JobStatus.filtered.is_final

