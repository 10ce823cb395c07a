from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, utcnow


class ModelAliasEvent(Base):
    """One move of an alias: who, when, from which version to which (None: created / removed).

    No foreign keys on the versions: history outlives a version that is later deleted.
    """

    __tablename__ = "model_alias_events"
    __table_args__ = (Index("ix_model_alias_events_name_alias", "name", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(100))
    from_model_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), default=None)
    to_model_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), default=None)
    actor: Mapped[str] = mapped_column(String(100))
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), default=None)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
