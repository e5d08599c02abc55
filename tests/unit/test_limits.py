"""Field limits (llmos_jobs/limits.py): each refusal names the field, the limit and
its setting; the JSON depth scanner agrees with a real parser."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmos_jobs.errors import InvalidRequest
from llmos_jobs.limits import FieldLimits, json_depth
from llmos_jobs.settings import Settings
from schemas.language import GenerateRequest

LIMITS = FieldLimits.from_settings(Settings(
    limit_prompt_bytes=10, limit_message_bytes=8, limit_messages=2, limit_persona_bytes=5,
    limit_knowledge_bytes=20, limit_title_chars=4, limit_stop_strings=1, limit_stop_bytes=3,
    limit_metadata_keys=1, limit_metadata_key_chars=3, limit_metadata_value_chars=4,
    limit_filename_chars=6))


def refusal(call: Any, *args: Any) -> str:
    with pytest.raises(InvalidRequest) as exc:
        call(*args)
    return str(exc.value)


def request(**fields: Any) -> GenerateRequest:
    return GenerateRequest.model_validate({"model": "m", **fields})


@pytest.mark.parametrize(("call", "args", "names"), [
    (LIMITS.generate, (request(prompt="é" * 6),), "prompt is 12 bytes; the limit is 10 "
                                                  "(LLMOS_LIMIT_PROMPT_BYTES)"),
    (LIMITS.generate, (request(messages=[{"role": "user", "content": "x"}] * 3),),
     "messages is 3 messages; the limit is 2 (LLMOS_LIMIT_MESSAGES)"),
    (LIMITS.generate, (request(messages=[{"role": "user", "content": "x"},
                                         {"role": "user", "content": "123456789"}]),),
     "messages[1].content is 9 bytes; the limit is 8 (LLMOS_LIMIT_MESSAGE_BYTES)"),
    (LIMITS.generate, (request(prompt="p", stop=["a", "b"]),),
     "stop is 2 strings; the limit is 1 (LLMOS_LIMIT_STOP_STRINGS)"),
    (LIMITS.generate, (request(prompt="p", stop=["abcd"]),),
     "stop[0] is 4 bytes; the limit is 3 (LLMOS_LIMIT_STOP_BYTES)"),
    (LIMITS.turn, ("123456789",), "message is 9 bytes; the limit is 8"),
    (LIMITS.persona, ("123456",), "persona is 6 bytes; the limit is 5 "
                                  "(LLMOS_LIMIT_PERSONA_BYTES)"),
    (LIMITS.knowledge, ("abcde", "x"), "title is 5 characters; the limit is 4"),
    (LIMITS.knowledge, ("t", "x" * 21), "document 't' is 21 bytes; the limit is 20 "
                                        "(LLMOS_LIMIT_KNOWLEDGE_BYTES)"),
    (LIMITS.metadata, ({"a": "1", "b": "2"},), "metadata is 2 keys; the limit is 1"),
    (LIMITS.metadata, ({"abcd": "1"},), "metadata key 'abcd' is 4 characters; the limit "
                                        "is 3 (LLMOS_LIMIT_METADATA_KEY_CHARS)"),
    (LIMITS.metadata, ({"a": "12345"},), "metadata['a'] is 5 characters; the limit is 4"),
    (LIMITS.filename, ("abcdefg",), "file name is 7 characters; the limit is 6 "
                                    "(LLMOS_LIMIT_FILENAME_CHARS)"),
])
def test_a_field_over_its_limit_is_refused_naming_the_setting(call: Any, args: Any,
                                                               names: str) -> None:
    assert names in refusal(call, *args)


def test_fields_within_their_limits_pass() -> None:
    LIMITS.generate(request(messages=[{"role": "user", "content": "12345678"}] * 2, stop=["abc"]))
    LIMITS.generate(request(prompt="0123456789"))
    LIMITS.knowledge("abcd", "x" * 20)
    LIMITS.metadata({"abc": "1234"})
    LIMITS.metadata(None)
    LIMITS.persona(None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3),
    max_leaves=30)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@given(json_values)
def test_json_depth_matches_the_parsed_value(value: Any) -> None:
    # Brackets inside strings, escaped quotes included, must not count.
    assert json_depth(json.dumps(value).encode()) == depth_of(value)
    assert json_depth(json.dumps(value, ensure_ascii=False).encode()) == depth_of(value)


def test_a_hostile_depth_is_measured_without_recursion() -> None:
    assert json_depth(b"[" * 1_000_000) == 1_000_000
