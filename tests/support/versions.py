"""Model versions registered straight into a database, for tests of what reads them
(no model directory behind them: the no-op engine, a made-up content hash each)."""

from __future__ import annotations

from sqlmodel import Session

from llmos_jobs.db import versions
from llmos_jobs.db.versions import Registration


def register_fake(session: Session, name: str, number: int, *, make_current: bool = True
                  ) -> Registration:
    """Version ``number`` of ``name``: path ``/models/vN``, a content hash of its own."""
    return versions.register_version(
        session=session, name=name, path=f"/models/v{number}", engine="noop",
        context_length=64, content_hash=f"{number:064x}", size_bytes=1, keep_alive=None,
        make_current=make_current)
