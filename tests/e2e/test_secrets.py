"""Secrets stay out of what llmos prints, on a live stack: `llmos db upgrade` shows the
database URL with its password masked (tests/unit/test_secrets.py has the rest)."""

from __future__ import annotations

import pytest

from tests.support.cli import llmos
from tests.support.stack import Stack


def test_llmos_db_upgrade_masks_the_password(stack: Stack) -> None:
    if stack.name != "postgres":
        pytest.skip("a SQLite URL holds no password")
    # The tests' PostgreSQL trusts local connections: the password is carried, not needed.
    scheme, rest = stack.database_url.split("://", 1)
    user, host = rest.split("@", 1)
    with_password = f"{scheme}://{user}:s3cret-pw@{host}"
    out = llmos("db", "upgrade", env={**stack.env, "LLMOS_DATABASE_URL": with_password})
    assert out.returncode == 0, out.stderr
    assert "s3cret-pw" not in out.stdout + out.stderr
    assert f"{user}:***@" in out.stdout
