"""Batch files: uploads (OpenAI's Files API, purpose "batch") and the parsing of a
batch's JSONL input, each line on its own: a bad line is an error-file entry naming its
line, never a failed batch."""

from __future__ import annotations

import json
from typing import Any, cast

from sqlalchemy.orm import QueryableAttribute, defer
from sqlmodel import Session, select

from llmos_jobs.db.batch_tables import StoredFile
from llmos_jobs.errors import InvalidRequest, NotFound
from llmos_jobs.services.submission import Submitter

ENDPOINT = "/v1/chat/completions"

# A valid line: its number, custom_id and request body.
Line = tuple[int, str, dict[str, Any]]


def upload(submitter: Submitter, tenant: str, *, filename: str, content: bytes, purpose: str
           ) -> StoredFile:
    limit = submitter.settings.batch_max_bytes
    if len(content) > limit:
        raise InvalidRequest(f"file {filename!r} is {len(content)} bytes; the limit is {limit} "
                             "(LLMOS_BATCH_MAX_BYTES)")
    submitter.limits.filename(filename)
    if purpose != "batch":
        raise InvalidRequest(f"purpose {purpose!r} is not supported: use 'batch'")
    try:
        text = content.decode()
    except UnicodeDecodeError:
        raise InvalidRequest(f"file {filename!r} is not UTF-8 text") from None
    row = StoredFile(tenant=tenant, filename=filename, purpose=purpose,
                     bytes=len(content), content=text)
    with submitter.database.session() as session:
        session.add(row)
    return row


def get_file(session: Session, tenant: str, file_id: str, *, content: bool = True
             ) -> StoredFile:
    """The file; ``content=False`` leaves its content unread (and undecrypted)."""
    query = select(StoredFile).where(StoredFile.id == file_id, StoredFile.tenant == tenant)
    if not content:
        query = query.options(defer(cast("QueryableAttribute[str]", StoredFile.content)))
    row = session.exec(query).first()
    if row is None:
        raise NotFound(f"file {file_id} not found")
    return row


def lines_of(content: str) -> list[str]:
    """The file's lines: JSONL ends a line at \\n only. (str.splitlines would also split
    at U+2028, U+2029 and other separators, which JSON allows inside strings.)"""
    return [line.removesuffix("\r") for line in content.split("\n")]


def _not_finite(value: str) -> float:
    number = float(value)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number {value[:20]}... is out of range")
    return number


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _load_line(raw: str) -> Any:
    """One line as JSON; ValueError for anything that is not plain JSON: NaN and
    Infinity, numbers out of range, nesting too deep for the parser."""
    try:
        return json.loads(raw, parse_float=_not_finite, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def line_error(number: int, custom_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"line": number, "custom_id": custom_id if isinstance(custom_id, str) else None,
            "code": code, "message": message}


def parse(content: str) -> tuple[list[Line], list[dict[str, Any]]]:
    """Valid lines (number, custom_id, request body) and errors, each line on its own."""
    valid: list[Line] = []
    invalid: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(lines_of(content), start=1):
        if not raw.strip():
            continue
        try:
            line = _load_line(raw)
        except ValueError as exc:
            invalid.append(line_error(number, None, "invalid_json", f"not JSON: {exc}"))
            continue
        except RecursionError:  # nested deeper than the parser goes: one bad line, no crash
            invalid.append(line_error(number, None, "invalid_json", "not JSON: nested too "
                                                                     "deeply"))
            continue
        if not isinstance(line, dict):
            invalid.append(line_error(number, None, "invalid_line", "a line must be an object"))
            continue
        custom_id = line.get("custom_id")
        problem = None
        if not isinstance(custom_id, str) or not custom_id:
            problem = ("missing_custom_id", "custom_id is missing or empty")
        elif custom_id in seen:
            problem = ("duplicate_custom_id", f"custom_id {custom_id!r} appears twice")
        elif line.get("method") != "POST":
            problem = ("invalid_method", f"method must be POST, not {line.get('method')!r}")
        elif line.get("url") != ENDPOINT:
            problem = ("invalid_url", f"url must be {ENDPOINT}, not {line.get('url')!r}")
        elif not isinstance(line.get("body"), dict):
            problem = ("invalid_body", "body must be a chat completion request object")
        if problem is not None:
            invalid.append(line_error(number, custom_id, *problem))
            continue
        assert isinstance(custom_id, str)
        seen.add(custom_id)
        valid.append((number, custom_id, line["body"]))
    return valid, invalid
