"""Batches exactly once, what needs no worker: every malformed line becomes an
error-file entry, and the completion window is bounded (tests/e2e/test_batch_exactly_once.py
has the rest)."""

from __future__ import annotations

import pytest

from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services import batch_files, batches
from tests.support.batch_lines import request_line


def test_every_malformed_line_becomes_an_error_entry_and_the_rest_stay_valid() -> None:
    lines = [
        request_line("sep", "m", "a\u2028b\u2029c"),  # line separators inside a JSON string
        '{"custom_id": "deep", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"custom_id": "big", "n": 1e999}',
        '{"custom_id": "digits", "n": ' + "9" * 5000 + "}",
        '{"custom_id": "nan", "n": NaN}',
        request_line("last", "m"),
    ]
    valid, invalid = batch_files.parse("\n".join(lines) + "\r\n")
    assert [(number, custom_id) for number, custom_id, _ in valid] == [(1, "sep"), (6, "last")]
    assert valid[0][2]["messages"][0]["content"] == "a\u2028b\u2029c"
    assert [(e["line"], e["code"]) for e in invalid] == [
        (2, "invalid_json"), (3, "invalid_json"), (4, "invalid_json"), (5, "invalid_json")]
    assert "nested too deeply" in invalid[0]["message"]



def test_the_completion_window_is_at_most_24_hours() -> None:
    batches.check_window("24h")
    batches.check_window("1440m")
    for window in ("25h", "86401s", "1000000h"):
        with pytest.raises(InvalidRequest, match="longer than 24h"):
            batches.check_window(window)
