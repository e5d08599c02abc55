"""Fixtures of every tier: one key ring for this process and the processes it starts,
and the demo model. The live stack's fixtures are in tests/e2e/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import DATABASE_POOL_SIZE


@pytest.fixture(scope="session", autouse=True)
def encryption_keys() -> Iterator[str]:
    """One key ring for this process and the workers it starts (tests/support/stack.py),
    and the same small database pools as theirs."""
    from cryptography.fernet import Fernet

    from llmos_jobs.settings import get_settings

    keys = Fernet.generate_key().decode()
    os.environ["LLMOS_ENCRYPTION_KEYS"] = keys
    # This process's own settings (a bare database URL) keep small pools too.
    os.environ["LLMOS_DATABASE_POOL_SIZE"] = str(DATABASE_POOL_SIZE)
    get_settings.cache_clear()
    yield keys


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmos_jobs.demo_model import create_demo_model

    # float64: greedy outputs compared across batch shapes must not flip on rounding.
    return create_demo_model(tmp_path_factory.mktemp("models") / "demo-tiny", dtype="float64")
