from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, utcnow


class IdempotencyRecord(Base):
    """The first response to a request sent with an ``Idempotency-Key`` header.

    Keys are scoped to the API key that sent them, so two clients cannot collide or read each
    other's responses. The record is written in the same transaction as what the request created,
    so a stored response always describes a row that exists.
    """

    __tablename__ = "idempotency_records"
    __table_args__ = (
        UniqueConstraint("api_key_id", "endpoint", "key", name="uq_idempotency_records_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    endpoint: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
