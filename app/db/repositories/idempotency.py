"""Stored first responses of requests sent with an Idempotency-Key."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import IdempotencyRecord


def get(
    session: Session, api_key_id: uuid.UUID, endpoint: str, key: str
) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.api_key_id == api_key_id,
            IdempotencyRecord.endpoint == endpoint,
            IdempotencyRecord.key == key,
        )
    )


def add(session: Session, record: IdempotencyRecord) -> None:
    session.add(record)
    session.flush()


def remove(session: Session, record: IdempotencyRecord) -> None:
    # A bulk DELETE: two requests removing the same expired record must not fail the second
    # (session.delete would raise StaleDataError on Postgres when the row is already gone).
    session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record.id))


def delete_older_than(session: Session, cutoff: datetime) -> int:
    result = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
    return result.rowcount or 0  # type: ignore[attr-defined]
