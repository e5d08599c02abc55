"""A worker's publisher of jobs' live events (``llmos_jobs.job_events``).

The engine calls a text sink on its decode loop for every request at every step: a
sink only puts the piece on a queue, and one thread writes what has gathered to Redis
in one pipeline, consecutive pieces of a job joined into one event. A Redis that is
slow or gone costs the streams, never the jobs: the database keeps every outcome, and
readers fall back on it."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

from llmos_jobs.job_events import JobEventWriter
from schemas.common import JobStatus
from schemas.events import JobEvent

log = logging.getLogger(__name__)
_MAX_GATHER = 4096


class EventPublisher:
    def __init__(self, writer: JobEventWriter) -> None:
        self._writer = writer
        self._queue: queue.SimpleQueue[tuple[str, JobEvent]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0  # of the process whose thread drains the queue

    def text_sink(self, job_id: str) -> TextSink:
        self._started()

        def put(text: str) -> None:
            self._queue.put((job_id, JobEvent.delta(text)))
        return TextSink(put)

    def status(self, job_id: str, status: JobStatus) -> None:
        self._started()
        self._queue.put((job_id, JobEvent.of_status(status)))

    def _started(self) -> None:
        """The draining thread of this process: a prefork pool's child inherits the
        publisher but not its parent's thread, so each process starts its own."""
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._run, args=(self._queue,), name="llmos-events",
                                 daemon=True).start()
                self._pid = os.getpid()

    def _run(self, pending: queue.SimpleQueue[tuple[str, JobEvent]]) -> None:
        while True:
            gathered = [pending.get()]
            while len(gathered) < _MAX_GATHER:
                try:
                    gathered.append(pending.get_nowait())
                except queue.Empty:
                    break
            try:
                for job_id, events in _by_job(gathered).items():
                    self._writer.append(job_id, events)
            except Exception:  # the streams lose these events; the jobs lose nothing
                log.warning("live events not published", exc_info=True)


class TextSink:
    """One job's ``EngineRequest.on_text``, which remembers what it sent: ``complete``
    sends what the engine did not stream (an engine that answers in one piece, such as
    the SGLang server adapter), so every job's deltas join up to its text."""

    def __init__(self, put: Callable[[str], None]) -> None:
        self._put = put
        self.sent = ""

    def __call__(self, piece: str) -> None:
        self.sent += piece
        self._put(piece)

    def complete(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self(text[len(self.sent):])
        elif not text.startswith(self.sent):
            log.warning("the engine streamed text its answer does not start with")


def _by_job(gathered: list[tuple[str, JobEvent]]) -> dict[str, list[JobEvent]]:
    """Each job's events in order, consecutive deltas joined."""
    jobs: dict[str, list[JobEvent]] = {}
    for job_id, event in gathered:
        events = jobs.setdefault(job_id, [])
        if event.type == "delta" and events and events[-1].type == "delta":
            events[-1] = JobEvent.delta((events[-1].text or "") + (event.text or ""))
        else:
            events.append(event)
    return jobs
