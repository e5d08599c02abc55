"""Keys every process shares: refusal without a key ring outside the embedded default,
atomic creation of the embedded key file, and rotation of every encrypted column."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Text, cast, select, text
from sqlmodel import SQLModel

from llmos_jobs import crypto
from llmos_jobs.client import LlmosClient
from llmos_jobs.db.rotation import EncryptedColumn, encrypted_columns, rotate_all
from llmos_jobs.db.session import session_scope
from llmos_jobs.errors import LlmosError
from llmos_jobs.services import batch_files
from llmos_jobs.services.webhooks.events import emit
from llmos_jobs.services.webhooks.signing import tenant_secret
from llmos_jobs.settings import Settings, get_settings
from tests.support.stack import database_at


def test_outside_the_embedded_default_every_process_refuses_to_start_without_keys(
        tmp_path: Path) -> None:
    postgres = "postgresql://llmos@db.internal/llmos"
    with pytest.raises(LlmosError, match="LLMOS_ENCRYPTION_KEYS is not set"):
        crypto.require_key_ring(Settings(database_url=postgres, encryption_keys=None))
    crypto.require_key_ring(Settings(database_url=postgres, encryption_keys="k"))
    crypto.require_key_ring(Settings(database_url=f"sqlite:///{tmp_path}/x.db",
                                     encryption_keys=None))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(LLMOS_DATABASE_URL=postgres, LLMOS_BROKER_URL="redis://127.0.0.1:1/0",
               LLMOS_DATA_DIR=str(tmp_path))
    for command in (["worker"], ["control"], ["api"]):
        done = subprocess.run([sys.executable, "-m", "llmos_jobs.cli.main", *command],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "LLMOS_ENCRYPTION_KEYS is not set" in done.stderr
        assert "db.internal" not in done.stderr  # the URL (and any password) stays out


def test_the_embedded_key_file_is_created_whole_once_by_racing_processes(
        tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from llmos_jobs.crypto import _local_keys;"
            "print(','.join(_local_keys(Path(sys.argv[1]))))")
    racers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                               stdout=subprocess.PIPE, text=True) for _ in range(6)]
    keys = {racer.communicate(timeout=120)[0].strip() for racer in racers}
    assert len(keys) == 1 and all(k for k in keys)
    assert [p.name for p in tmp_path.iterdir()] == [crypto.KEY_FILE]
    assert (tmp_path / crypto.KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_the_rotation_finds_every_encrypted_column_in_the_metadata() -> None:
    found = set(encrypted_columns())
    # The three the first rotation missed, and the rest.
    assert {EncryptedColumn("stored_file", "content"), EncryptedColumn("webhook_secret", "secret"),
            EncryptedColumn("webhook_delivery", "payload"), EncryptedColumn("job", "payload"),
            EncryptedColumn("job", "result"), EncryptedColumn("mindspace", "persona"),
            EncryptedColumn("mindspace_message", "content"),
            EncryptedColumn("mindspace_snapshot", "data")} <= found
    for column in found:
        table = SQLModel.metadata.tables[column.table]
        assert len(table.primary_key.columns) == 1, column  # what the rotation pages by


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("LLMOS_ENCRYPTION_KEYS", old)
    get_settings.cache_clear()
    yield [old, new]
    get_settings.cache_clear()


def test_after_rotation_the_old_key_can_go(tmp_path: Path, keys: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = keys
    url = f"sqlite:///{tmp_path / 'llmos.db'}"
    client = LlmosClient(settings=Settings(database_url=url, data_dir=tmp_path,
                                           broker_url="redis://127.0.0.1:1/0"))
    client.register_model("m", tmp_path / "m", engine="noop")
    space = client.create_mindspace(model="m", persona="a persona")
    client.snapshot(space.id)
    client.upload_file(filename="in.jsonl", content=b"{}", purpose="batch")
    with session_scope(database_at(url)) as session:
        tenant_secret(session=session, tenant=client.tenant)
        emit(session=session, tenant=client.tenant, event_type="t", url="http://127.0.0.1/h",
             data={"x": 1}, settings=client.settings)
    monkeypatch.setenv("LLMOS_ENCRYPTION_KEYS", f"{new},{old}")
    get_settings.cache_clear()
    with session_scope(database_at(url)) as session:
        counts = rotate_all(session=session)
    assert set(counts) == {f"{c.table}.{c.column}" for c in encrypted_columns()}
    only_new = Fernet(new.encode())
    with session_scope(database_at(url)) as session:
        for column in encrypted_columns():
            table = SQLModel.metadata.tables[column.table]
            tokens = session.execute(select(cast(table.c[column.column], Text)).where(
                table.c[column.column].is_not(None))).scalars().all()
            for token in tokens:
                only_new.decrypt(token.encode())  # raises if any value kept the old key
    assert counts["stored_file.content"] == 1 and counts["webhook_secret.secret"] == 1
    assert counts["webhook_delivery.payload"] == 1 and counts["mindspace.persona"] == 1


def test_two_settings_in_one_process_each_read_their_own_data_and_not_the_other(
        tmp_path: Path) -> None:
    """The keys are bound to the database handle built from a Settings, not read from
    the process environment by the column type: each client reads what it wrote, and
    neither reads the other's (nor does this process's own ring, LLMOS_ENCRYPTION_KEYS,
    read either)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    keys = {"a": Fernet.generate_key().decode(), "b": Fernet.generate_key().decode()}
    clients = {name: LlmosClient(tenant="t", settings=Settings(
        database_url=url, data_dir=tmp_path / name, encryption_keys=ring))
        for name, ring in keys.items()}
    stored = {name: client.upload_file(filename=f"{name}.jsonl", purpose="batch",
                                   content=f"written by {name}".encode()).id
              for name, client in clients.items()}
    for reader, client in clients.items():
        for writer, file_id in stored.items():
            with client.session() as session:
                if reader == writer:
                    assert batch_files.get_file(session, "t", file_id).content == \
                        f"written by {writer}"
                else:
                    with pytest.raises(crypto.KeyRingMismatch):
                        _ = batch_files.get_file(session, "t", file_id).content
    for file_id in stored.values():
        with session_scope(database_at(url)) as session, pytest.raises(crypto.KeyRingMismatch):
            _ = batch_files.get_file(session, "t", file_id).content
    # On disk, each token is under its writer's key alone.
    with session_scope(database_at(url)) as session:
        tokens = dict(session.execute(text("SELECT id, content FROM stored_file")).all())
    for writer, file_id in stored.items():
        assert Fernet(keys[writer].encode()).decrypt(tokens[file_id].encode()) == \
            f"written by {writer}".encode()
