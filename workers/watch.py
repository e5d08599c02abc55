"""Which running jobs of this worker no longer belong to it: cancelled, or reaped and
given to another attempt. One thread asks the database for all of them at once and
sets a flag per job; the engine's decode loop only reads flags, so a slow or failing
database never stalls or fails a batch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from llmos_jobs.db.jobs import owned_of
from llmos_jobs.db.session import Database

log = logging.getLogger(__name__)


@dataclass
class JobWatcher:
    """Started lazily by the first ``watch``; a daemon thread for the process's life."""

    database: Database
    interval_s: float = 0.2
    _watched: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def watch(self, job_id: str, message_id: str) -> Callable[[], bool]:
        """A flag read that turns True once the attempt ``message_id`` no longer owns
        the job. Call ``forget`` when the attempt ends."""
        event = threading.Event()
        with self._lock:
            self._watched[(job_id, message_id)] = event
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llmos-job-watch",
                                                daemon=True)
                self._thread.start()
        return event.is_set

    def forget(self, job_id: str, message_id: str) -> None:
        with self._lock:
            self._watched.pop((job_id, message_id), None)

    def check(self) -> None:
        """One look at the database for every watched attempt."""
        with self._lock:
            watched = dict(self._watched)
        if not watched:
            return
        with self.database.session() as session:
            owned = owned_of(session=session, attempts=list(watched))
        for attempt, event in watched.items():
            if attempt not in owned:
                event.set()

    def _loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # a database blip: the flags wait for the next look
                log.warning("could not check running jobs for cancellation; retrying",
                            exc_info=True)
