"""Standard Webhooks signing (https://www.standardwebhooks.com): each request carries
`webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`, made by the `standardwebhooks` library with the tenant's secret.

One secret per tenant (``whsec_<base64>``), created on first use, stored encrypted.
Rotation replaces it at once: every request signed afterwards (retries of older
events included) carries the new secret's signature only."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from math import floor

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col
from standardwebhooks import Webhook

from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import WebhookSecret, WebhookSecretPublic

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # HMAC-SHA256 key the size of its output


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _insert_if_absent(session: Session, tenant: str) -> None:
    # Two workers may sign a tenant's first event at once: the loser keeps the winner's
    # secret instead of failing on the primary key.
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(WebhookSecret.__table__).values(  # type: ignore[attr-defined]
        tenant=tenant, secret=new_secret(), created_at=utcnow())
    session.execute(statement.on_conflict_do_nothing(index_elements=["tenant"]))


def tenant_secret(*, session: Session, tenant: str) -> WebhookSecretPublic:
    """The tenant's signing secret, created on first use."""
    row = session.get(WebhookSecret, tenant)
    if row is None:
        _insert_if_absent(session, tenant)
        row = session.get(WebhookSecret, tenant, populate_existing=True)
    assert row is not None
    return WebhookSecretPublic.model_validate(row, from_attributes=True)


def rotate_secret(*, session: Session, tenant: str) -> WebhookSecretPublic:
    """Replace the tenant's secret; the old one signs nothing from now on."""
    tenant_secret(session=session, tenant=tenant)
    session.execute(update(WebhookSecret).where(col(WebhookSecret.tenant) == tenant)
                    .values(secret=new_secret(), created_at=utcnow()))
    row = session.get(WebhookSecret, tenant, populate_existing=True)
    return WebhookSecretPublic.model_validate(row, from_attributes=True)


def signed_headers(*, secret: str, message_id: str, body: str,
                   now: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (a fresh timestamp each time)."""
    timestamp = now or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(floor(timestamp.timestamp())),
        "webhook-signature": signature,
    }
