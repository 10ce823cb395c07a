"""Resumable upload queries. Repositories only flush; the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db.models import Upload


def get(session: Session, upload_id: uuid.UUID) -> Upload | None:
    return session.get(Upload, upload_id)


def add(session: Session, upload: Upload) -> Upload:
    session.add(upload)
    session.flush()
    return upload


def expired_ids(session: Session, now: datetime) -> Sequence[uuid.UUID]:
    return session.scalars(select(Upload.id).where(Upload.expires_at < now)).all()


def known_ids(session: Session, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    return set(session.scalars(select(Upload.id).where(Upload.id.in_(ids))).all()) if ids else set()


def delete_ids(session: Session, ids: Sequence[uuid.UUID]) -> None:
    if ids:
        session.execute(delete(Upload).where(Upload.id.in_(ids)))


def extend(session: Session, upload_id: uuid.UUID, expires_at: datetime) -> bool:
    """Move an open upload's expiry; False when its row is gone (swept meanwhile)."""
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == "open")
        .values(expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
