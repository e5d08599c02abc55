"""Waiting on the live stack. A test waits for positive evidence that something
happened (a status, a log line, a row), never for a while: a time limit here only
guards against a hang, so a slow machine makes a test slower, never its outcome
different."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

# Only a guard against a hang: every wait ends as soon as what it waits for happens.
HANG_GUARD_S = 180.0
POLL_S = 0.05

T = TypeVar("T")


def until(predicate: Callable[[], T], what: str, timeout_s: float = HANG_GUARD_S,
          poll_s: float = POLL_S) -> T:
    """``predicate()``'s first truthy value, asked every ``poll_s``. After ``timeout_s``
    (a hang guard, not a time limit of the behaviour under test) the test fails,
    saying ``what`` never happened. An assertion inside ``predicate`` fails at once:
    that is how a wait says that what it waits for can no longer happen."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"never happened within {timeout_s:g} s: {what}")
        time.sleep(poll_s)


def log_count(path: Path, text: str) -> int:
    """How many times a process's log file says ``text`` so far."""
    return path.read_text(errors="replace").count(text) if path.exists() else 0


def wait_for_log(path: Path, text: str, *, more_than: int = 0) -> None:
    """Until a process's log file says ``text`` more than ``more_than`` times (the count
    before the event whose line it waits for: log_count)."""
    until(lambda: log_count(path, text) > more_than, f"{path} said {text!r}")
