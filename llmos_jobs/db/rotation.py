"""Re-encryption of every encrypted column under the newest key (`llmos encryption
rotate`). The columns are found in the table metadata (every column whose type is
EncryptedText or EncryptedJSON), so a new one is covered the day it is added. Values
are read and written as raw tokens, never decrypted into memory in bulk, and each write
is a compare-and-set on the token read: a value changed meanwhile is left as written."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Table, bindparam, select, update
from sqlmodel import Session, SQLModel

from llmos_jobs.crypto import EncryptedJSON, EncryptedText, KeyRing, key_ring_of
from llmos_jobs.db import tables  # noqa: F401  (every table in the metadata)


@dataclass(frozen=True)
class EncryptedColumn:
    table: str
    column: str


def encrypted_columns() -> list[EncryptedColumn]:
    """Every encrypted column of every table, in a stable order."""
    return sorted(
        (EncryptedColumn(table.name, column.name)
         for table in SQLModel.metadata.sorted_tables for column in table.columns
         if isinstance(column.type, EncryptedText | EncryptedJSON)),
        key=lambda c: (c.table, c.column))


def rotate_all(*, session: Session, batch: int = 500) -> dict[str, int]:
    """Rows re-encrypted per ``table.column``."""
    ring = key_ring_of(session.get_bind().dialect)  # the ring of the session's database
    return {f"{c.table}.{c.column}": _rotate_column(session, ring,
                                                    SQLModel.metadata.tables[c.table],
                                                    c.column, batch)
            for c in encrypted_columns()}


def _rotate_column(session: Session, ring: KeyRing, table: Table, name: str, batch: int
                   ) -> int:
    [key] = table.primary_key.columns
    # The raw token, not the decrypted value: the column's own type would decrypt it.
    raw = table.c[name].cast(table.c[name].type.impl_instance)  # type: ignore[attr-defined]
    write = (update(table)
             .where(key == bindparam("k"), raw == bindparam("old"))
             .values({name: bindparam("new", type_=table.c[name].type.impl_instance)})  # type: ignore[attr-defined]
             .execution_options(synchronize_session=False))
    done, last = 0, None
    while True:
        query = select(key, raw).where(table.c[name].is_not(None)).order_by(key).limit(batch)
        if last is not None:
            query = query.where(key > last)
        rows = session.execute(query).all()
        if not rows:
            return done
        session.execute(write, [{"k": k, "old": token, "new": ring.rotate(token)}
                                for k, token in rows])
        session.commit()
        done += len(rows)
        last = rows[-1][0]
