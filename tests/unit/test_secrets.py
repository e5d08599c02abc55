"""Secrets stay out of what llmos prints: database and broker URLs are shown with the
password masked, and settings never show them in their repr."""

from __future__ import annotations

import pytest

from llmos_jobs.db.session import masked
from llmos_jobs.settings import Settings


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://llmos:s3cret@db:5432/llmos", "postgresql+psycopg://llmos:***@db:5432/llmos"),
    ("postgresql://u:p%40ss@h/d", "postgresql://u:***@h/d"),
    ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
    ("redis://user:s3cret@redis:6379/0", "redis://user:***@redis:6379/0"),
    ("sqlite:////home/u/.llmos/llmos.db", "sqlite:////home/u/.llmos/llmos.db"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
])
def test_urls_are_printed_with_the_password_masked(url: str, shown: str) -> None:
    assert masked(url) == shown


def test_settings_do_not_show_urls_or_keys_in_their_repr() -> None:
    settings = Settings(database_url="postgresql://u:s3cret@h/d",
                        broker_url="redis://:s3cret@r:6379/0",
                        encryption_keys="fernet-s3cret")  # type: ignore[arg-type]
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
    assert settings.encryption_keys is not None
    assert settings.encryption_keys.get_secret_value() == "fernet-s3cret"


