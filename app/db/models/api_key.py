from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, new_id, utcnow


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; the secret is shown once, when it is created."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    # The public part of the key ("tl_<prefix>_<secret>"): shown in listings, used for lookup.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    # sha256 of the whole key. Keys carry 256 bits of randomness, so a fast hash is enough: there
    # is nothing to brute-force that a slow hash would protect (unlike passwords).
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
