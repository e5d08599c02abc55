"""The knowledge base: chunking, and retrieval quality with the real embedding model."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import text

from llmos_jobs.db.migrate import alembic_config, upgrade
from llmos_jobs.db.session import get_engine
from llmos_jobs.services.knowledge import chunk_text, embedder, top_k
from tests.support.stack import database_at

HANDBOOK = """# Priorities
Jobs carry a priority from 0 to 9; 0 runs first. Interactive work uses 1, batch work 8.

# Workers and GPUs
Each worker process is pinned to one GPU with CUDA_VISIBLE_DEVICES and loads its model lazily.

# Prefix cache
The engine keeps the keys and values of earlier prompts so a shared prefix is not computed again.

# Billing
Invoices are sent on the first day of every month and payment is due within thirty days.

# Holidays
The office is closed on public holidays and during the last week of December.

# Security
Conversation history is encrypted at rest with keys that can be rotated.
"""

QUESTIONS = {
    "Which priority number runs before all others?": "Priorities",
    "How is a worker tied to a graphics card?": "Workers and GPUs",
    "Why is a repeated prompt start cheaper the second time?": "Prefix cache",
    "When do I have to pay my invoice?": "Billing",
    "Is the office open at the end of December?": "Holidays",
    "Are stored chats protected?": "Security",
    "What number do batch jobs get?": "Priorities",
    "Does a worker load its model at start?": "Workers and GPUs",
}


def test_markdown_is_chunked_at_headings() -> None:
    chunks = chunk_text(HANDBOOK)
    assert len(chunks) == 6
    assert all(c.startswith("#") for c in chunks)
    long = " ".join(f"w{i}" for i in range(300))
    pieces = chunk_text(long, max_words=120)
    assert len(pieces) == 3 and pieces[1].split()[0] == "w100"  # 20 words of overlap


def test_the_right_chunk_is_in_the_top_three_for_most_questions() -> None:
    chunks = chunk_text(HANDBOOK)
    vectors = [v.tobytes() for v in embedder().embed(chunks)]
    hits = 0
    for question, heading in QUESTIONS.items():
        best = top_k(embedder().embed([question])[0], vectors, 3)
        hits += any(chunks[i].startswith(f"# {heading}") for i in best)
    assert hits >= 7, f"{hits}/{len(QUESTIONS)} questions found their chunk in the top 3"


def test_the_migration_encrypts_history_stored_in_plaintext(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0002")
    with get_engine(database_at(url)).begin() as conn:
        conn.execute(text("INSERT INTO mindspace (id, tenant, model, persona, created_at, "
                          "updated_at) VALUES ('m1', 't', 'demo', 'plain persona', "
                          "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO mindspace_message (mindspace_id, tenant, role, content, "
                          "created_at) VALUES ('m1', 't', 'user', 'plain history', "
                          "'2026-01-01 00:00:00')"))
    upgrade(database_at(url))
    with get_engine(database_at(url)).connect() as conn:
        raw = conn.execute(text("SELECT content FROM mindspace_message")).scalar_one()
        persona = conn.execute(text("SELECT persona FROM mindspace")).scalar_one()
    assert "plain" not in raw and "plain" not in persona
    from llmos_jobs.db import mindspaces as mindspace_rows
    from llmos_jobs.db.session import session_scope

    with session_scope(database_at(url)) as session:
        shown = mindspace_rows.show_mindspace(session=session, tenant="t", mindspace_id="m1")
    assert shown.persona == "plain persona"
    assert [m.content for m in shown.messages] == ["plain history"]
