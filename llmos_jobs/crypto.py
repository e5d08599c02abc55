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
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from llmos_jobs.errors import LlmosError
from llmos_jobs.settings import Settings, get_settings

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


def require_key_ring(settings: Settings) -> None:
    """Refuse to go on without a shared key ring outside the embedded default."""
    if settings.encryption_keys and settings.encryption_keys.get_secret_value().strip(" ,"):
        return
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        return
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    raise LlmosError(
        f"LLMOS_ENCRYPTION_KEYS is not set. With a {dialect} database (not the embedded "
        "default) the API, the workers and the control process must share one key ring, "
        "or none could read what another wrote: create a key with `llmos encryption "
        "new-key` and give the same LLMOS_ENCRYPTION_KEYS to every process.")


def key_list() -> list[str]:
    settings = get_settings()
    require_key_ring(settings)
    if settings.encryption_keys:
        keys = settings.encryption_keys.get_secret_value()
        return [k.strip() for k in keys.split(",") if k.strip()]
    return list(_local_keys(settings.data_dir))


@lru_cache(maxsize=8)
def _cipher(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError as exc:
        raise LlmosError(f"LLMOS_ENCRYPTION_KEYS holds an invalid Fernet key: {exc}") from None


def cipher() -> MultiFernet:
    return _cipher(tuple(key_list()))


def encrypt(text: str) -> str:
    return cipher().encrypt(text.encode()).decode()


class KeyRingMismatch(LlmosError):
    """Stored text that none of this process's keys decrypts."""


def decrypt(token: str) -> str:
    try:
        return cipher().decrypt(token.encode()).decode()
    except InvalidToken:
        raise KeyRingMismatch(
            "stored text cannot be decrypted with the configured keys (LLMOS_ENCRYPTION_KEYS "
            "lost a key that is still in use, or differs between processes?)") from None


def rotate_token(token: str) -> str:
    """The same plaintext, encrypted under the newest key."""
    return cipher().rotate(token.encode()).decode()


class EncryptedText(TypeDecorator[str]):
    """Text stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else decrypt(value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON document stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else encrypt(json.dumps(value, separators=(",", ":")))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(decrypt(value))
