"""Property tests of the batch line parser: whatever a file holds, every non-blank line
is accounted for exactly once, as a valid request or as an error naming its line, and
nothing raises."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llmos_jobs.services.batch_files import ENDPOINT, parse

good_line = st.builds(
    lambda cid, text: json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT,
                                  "body": {"model": "m", "messages": [
                                      {"role": "user", "content": text}]}},
                                 ensure_ascii=False),
    st.text(min_size=1, max_size=8), st.text(max_size=20))
json_line = st.recursive(st.none() | st.integers() | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.sampled_from(["custom_id", "method", "url",
                                                            "body"]), inner, max_size=4),
                         max_leaves=10).map(json.dumps)
any_line = st.text(max_size=40).filter(lambda t: "\n" not in t)
lines = st.lists(st.one_of(good_line, json_line, any_line), max_size=12)


@given(lines)
def test_every_line_is_a_request_or_an_error(file_lines: list[str]) -> None:
    valid, invalid = parse("\n".join(file_lines))
    numbers = [n for n, _, _ in valid] + [e["line"] for e in invalid]
    expected = [i for i, line in enumerate(file_lines, start=1) if line.strip()]
    assert sorted(numbers) == expected
    ids = [cid for _, cid, _ in valid]
    assert len(ids) == len(set(ids))
    assert all(isinstance(body, dict) for _, _, body in valid)


def test_a_line_nested_too_deeply_is_an_error_not_a_crash() -> None:
    valid, invalid = parse("[" * 100_000 + "\n" + json.dumps({"custom_id": "a"}))
    assert valid == []
    assert [(e["line"], e["code"]) for e in invalid] == [(1, "invalid_json"),
                                                         (2, "invalid_method")]


def test_a_line_separator_inside_a_string_does_not_split_the_line() -> None:
    line: dict[str, Any] = {"custom_id": "a", "method": "POST", "url": ENDPOINT,
                            "body": {"messages": [{"role": "user", "content": "a\u2028b\x0cc"}]}}
    valid, invalid = parse(json.dumps(line, ensure_ascii=False))
    assert invalid == [] and valid[0][2]["messages"][0]["content"] == "a\u2028b\x0cc"
