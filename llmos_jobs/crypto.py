"""Encryption at rest of tenant text: mindspace history, knowledge, persona, snapshots,
and job payloads and results. MultiFernet: the first key encrypts, every key decrypts,
so a new key is added in front and `llmos encryption rotate` re-encrypts under it.

Keys come from LLMOS_ENCRYPTION_KEYS (comma-separated Fernet keys, newest first). With
none set, the embedded default (a SQLite database) keeps one generated key in the data
directory (mode 0600), shared by the commands and workers that use that directory.
Outside it (any other database) processes on other machines or containers, each with a
data directory of its own, would each mint their own key and fail to read what the
others wrote: there every process refuses to start without LLMOS_ENCRYPTION_KEYS."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from llmos_jobs.errors import LlmosError
from llmos_jobs.settings import Settings

KEY_FILE = "encryption.keys"


@lru_cache(maxsize=8)
def _local_keys(data_dir: Path) -> tuple[str, ...]:
    """The embedded key ring of ``data_dir``, created on first use (read once per
    process: every encrypted value passes through here)."""
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a private name, then linked into place: a second process
        # never reads a half-written file, and of two that race, one key wins.
        draft = data_dir / f".{KEY_FILE}.{os.getpid()}.{uuid.uuid4().hex}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(Fernet.generate_key().decode() + "\n")
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
        finally:
            draft.unlink()
    return tuple(k for k in path.read_text().split() if k)


@dataclass(frozen=True)
class KeyRing:
    """The keys of one deployment, as one ``Settings`` names them: LLMOS_ENCRYPTION_KEYS,
    or (the embedded default only) the key file of its data directory. Built at an entry
    point and bound to the database handle (llmos_jobs.db.session): the encrypted column
    types use the ring of the engine they run on, never the process environment, so two
    ``Settings`` in one process each read and write with their own keys."""

    configured: tuple[str, ...]  # LLMOS_ENCRYPTION_KEYS, newest first; () if unset
    data_dir: Path
    database_url: str  # decides whether a key may be minted locally (SQLite only)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        secret = settings.encryption_keys.get_secret_value() if settings.encryption_keys else ""
        return cls(configured=tuple(k.strip() for k in secret.split(",") if k.strip()),
                   data_dir=settings.data_dir,
                   database_url=settings.resolved_database_url())

    def require(self) -> None:
        """Refuse to go on without a shared key ring outside the embedded default."""
        if self.configured or self.database_url.startswith("sqlite"):
            return
        dialect = self.database_url.split(":", 1)[0].split("+", 1)[0]
        raise LlmosError(
            f"LLMOS_ENCRYPTION_KEYS is not set. With a {dialect} database (not the embedded "
            "default) the API, the workers and the control process must share one key "
            "ring, or none could read what another wrote: create a key with `llmos "
            "encryption new-key` and give the same LLMOS_ENCRYPTION_KEYS to every process.")

    def keys(self) -> tuple[str, ...]:
        self.require()
        return self.configured or _local_keys(self.data_dir)

    def cipher(self) -> MultiFernet:
        return _cipher(self.keys())

    def encrypt(self, text: str) -> str:
        return self.cipher().encrypt(text.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self.cipher().decrypt(token.encode()).decode()
        except InvalidToken:
            raise KeyRingMismatch(
                "stored text cannot be decrypted with the configured keys "
                "(LLMOS_ENCRYPTION_KEYS lost a key that is still in use, or differs between "
                "processes?)") from None

    def rotate(self, token: str) -> str:
        """The same plaintext, encrypted under the newest key."""
        return self.cipher().rotate(token.encode()).decode()


def require_key_ring(settings: Settings) -> None:
    """Refuse to go on without a shared key ring outside the embedded default."""
    KeyRing.from_settings(settings).require()


@lru_cache(maxsize=8)
def _cipher(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError as exc:
        raise LlmosError(f"LLMOS_ENCRYPTION_KEYS holds an invalid Fernet key: {exc}") from None


class KeyRingMismatch(LlmosError):
    """Stored text that none of this process's keys decrypts."""


# The ring of each engine's dialect: a column type sees the dialect it runs on, and
# each engine has a dialect of its own.
_rings: WeakKeyDictionary[Dialect, KeyRing] = WeakKeyDictionary()


def bind_key_ring(dialect: Dialect, ring: KeyRing) -> None:
    """Encrypted columns on engines of ``dialect`` use ``ring``."""
    _rings[dialect] = ring


def key_ring_of(dialect: Dialect) -> KeyRing:
    ring = _rings.get(dialect)
    if ring is None:
        raise LlmosError("this database engine was built without a key ring: build it "
                         "with llmos_jobs.db.session.get_engine")
    return ring


class EncryptedText(TypeDecorator[str]):
    """Text stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else key_ring_of(dialect).encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else key_ring_of(dialect).decrypt(value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON document stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return key_ring_of(dialect).encrypt(json.dumps(value, separators=(",", ":")))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(key_ring_of(dialect).decrypt(value))
