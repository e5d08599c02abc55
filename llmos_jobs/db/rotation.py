"""Re-encryption of every encrypted column under the newest key (`llmos encryption
rotate`). Values are read and written as raw tokens, never decrypted into memory in
bulk."""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import Session

from llmos_jobs.crypto import rotate_token

ENCRYPTED_COLUMNS: list[tuple[str, str, str]] = [
    ("job", "id", "payload"), ("job", "id", "result"), ("mindspace", "id", "persona"),
    ("mindspace_message", "id", "content"), ("mindspace_chunk", "id", "title"),
    ("mindspace_chunk", "id", "text"), ("mindspace_snapshot", "id", "data"),
]


def rotate_all(*, session: Session, batch: int = 500) -> dict[str, int]:
    """Rows re-encrypted per ``table.column``."""
    counts: dict[str, int] = {}
    for table, key, column in ENCRYPTED_COLUMNS:
        done, last = 0, None
        while True:
            where = f"{column} IS NOT NULL" + (f" AND {key} > :last" if last is not None else "")
            rows = session.execute(
                text(f"SELECT {key}, {column} FROM {table} WHERE {where} "
                     f"ORDER BY {key} LIMIT {batch}"), {"last": last}).all()
            if not rows:
                break
            for row_key, token in rows:
                session.execute(text(f"UPDATE {table} SET {column} = :v WHERE {key} = :k"),
                                {"v": rotate_token(token), "k": row_key})
            session.commit()
            done += len(rows)
            last = rows[-1][0]
        counts[f"{table}.{column}"] = done
    return counts
