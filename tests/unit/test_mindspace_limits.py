"""A mindspace's limits as settings, and the refusals they produce (no database)."""

from __future__ import annotations

import pytest

from llmos_jobs.db.tables import KnowledgeChunk, Mindspace, MindspaceSettings
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.mindspace_limits import check_knowledge, check_turn, knowledge_bytes


def _space(**settings: int) -> Mindspace:
    return Mindspace(id="ms1", tenant="t", model="m",
                     settings=MindspaceSettings(**settings).model_dump())


def _chunk(document: str, text: str, size: int | None) -> KnowledgeChunk:
    return KnowledgeChunk(mindspace_id="ms1", tenant="t", document=document, title=document,
                          position=0, text=text, embedding=b"", document_bytes=size)


def test_zero_removes_a_limit_and_the_limit_caps_the_default_reply() -> None:
    settings = MindspaceSettings(max_tokens_per_turn=0, knowledge_max_bytes=0)
    assert (settings.max_tokens_per_turn, settings.knowledge_max_bytes) == (None, None)
    assert settings.default_max_tokens() == settings.max_tokens == 64
    assert MindspaceSettings(max_tokens_per_turn=8).default_max_tokens() == 8
    assert MindspaceSettings(max_tokens=4, max_tokens_per_turn=8).default_max_tokens() == 4


def test_a_turn_above_its_limit_is_refused_naming_it() -> None:
    check_turn(_space(max_tokens_per_turn=8), 8)
    check_turn(_space(), 10_000)
    with pytest.raises(InvalidRequest, match="max_tokens 9 is above mindspace ms1's "
                                             "max_tokens_per_turn 8"):
        check_turn(_space(max_tokens_per_turn=8), 9)


def test_knowledge_bytes_are_the_uploaded_sizes() -> None:
    # Two chunks of one 100-byte document count 100 once; a document stored before its
    # size was kept counts its chunks' UTF-8 bytes ("é" is two).
    chunks = [_chunk("a", "x" * 60, 100), _chunk("a", "y" * 60, 100), _chunk("b", "é", None)]
    assert knowledge_bytes(chunks) == 102
    check_knowledge(_space(knowledge_max_bytes=110), chunks, title="c", size=8)
    with pytest.raises(InvalidRequest, match=r"document 'c' is 9 bytes and the knowledge "
                                             r"base holds 102: 111 would exceed .* "
                                             r"knowledge_max_bytes 110"):
        check_knowledge(_space(knowledge_max_bytes=110), chunks, title="c", size=9)
