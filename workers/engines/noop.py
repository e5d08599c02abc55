"""An engine that answers at once: for measuring the pipeline without a model."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from workers.engines.base import Completion, EngineRequest, EngineStats, FinishReason


class NoopEngine:
    """Answers "ok" per token, or with ``echo`` the request's last message (so a test can
    tell which request a reply answers); ``delay_s`` stands in for the model's time.
    With ``log``, each request computed appends a line to that file as it starts (its
    prompt, the time, the process): a record of executions that no database write or
    lost acknowledgement can change, for tests that count how often work ran. With
    ``gate``, a request whose time is up still waits until that file exists."""

    device = "cpu"

    def __init__(self, name: str, *, delay_s: float = 0.0, echo: bool = False,
                 log: Path | None = None, gate: Path | None = None) -> None:
        self.name = name
        self.gate = gate
        self.delay_s = delay_s
        self.echo = echo
        self.log = log
        self._loaded = False
        self._stats = EngineStats(model=self.name)

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False
        self._stats = EngineStats(model=self.name)

    def warmup(self) -> None:
        self.load()

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def flush_cache(self) -> None:
        pass

    def health(self) -> bool:
        return self._loaded

    def stats(self) -> EngineStats:
        return self._stats

    def update_weights(self, path: str) -> None:
        pass

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        self._stats.requests += len(requests)
        self._stats.record_batch(len(requests))
        until = time.monotonic() + self.delay_s
        if self.log is not None:
            _record(self.log, requests)
        out = []
        for request in requests:
            words = (request.prompt or " ".join(m.content for m in request.messages or ()))
            prompt_tokens = len(words.split())
            n = request.sampling.max_tokens
            reply = ["ok"] * n
            if self.echo:
                last = request.prompt or (request.messages[-1].content if request.messages else "")
                reply = last.split()[:n]
            finish: FinishReason = "abort" if self._wait(until, request) else "length"
            out.append(
                Completion(
                    text=" ".join(reply), finish_reason=finish,
                    prompt_tokens=prompt_tokens, completion_tokens=len(reply),
                )
            )
        return out

    def _wait(self, until: float, request: EngineRequest) -> bool:
        """Sleep until ``until`` as a model would compute; True if the request was
        stopped first (cancelled, or past its deadline)."""
        while (left := until - time.monotonic()) > 0 or (
                self.gate is not None and not self.gate.exists()):
            if request.should_stop is not None and request.should_stop():
                return True
            if request.deadline is not None and time.monotonic() >= request.deadline:
                return True
            time.sleep(min(left, 0.05) if left > 0 else 0.05)
        return False


def _record(log: Path, requests: Sequence[EngineRequest]) -> None:
    lines = "".join(json.dumps({
        "prompt": r.prompt or (r.messages[-1].content if r.messages else ""),
        "at": time.time(), "pid": os.getpid()}) + "\n" for r in requests)
    # One write to a file opened for appending: on a local file system each write lands
    # whole at the end, so lines of concurrent processes never interleave.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)
