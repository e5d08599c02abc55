"""The attempts this process holds: entered before the claim, left after the outcome is
committed (or the attempt given up), so that at any moment every job this process
claimed and has not finished recording is in it.

Two readers rely on that. A redelivery of a job that this very process claimed is a
takeover only when the attempt is no longer held (its outcome never reached the
database, and the message came back); and the heartbeat reports the held job ids, so
the reaper can tell a job `running` on a live worker that nobody there still runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class HeldJobs:
    _held: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def holding(self, job_id: str, message_id: str) -> Iterator[None]:
        key = (job_id, message_id)
        with self._lock:
            self._held[key] = self._held.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key]

    def count(self, job_id: str, message_id: str) -> int:
        """Deliveries of this attempt now inside ``holding`` (the asking one included)."""
        with self._lock:
            return self._held.get((job_id, message_id), 0)

    def job_ids(self) -> list[str]:
        with self._lock:
            return sorted({job_id for job_id, _ in self._held})
