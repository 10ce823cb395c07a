from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, new_id, utcnow


class Upload(Base):
    """A resumable dataset upload: its parts are files under ``<data_dir>/uploads/<id>/``
    (``app.storage.parts``); completing it ingests them as one archive."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    # The key that created it; other keys get 404 (an upload id is not a secret worth guessing).
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), default=None
    )
    filename: Mapped[str] = mapped_column(String(300))
    name: Mapped[str | None] = mapped_column(String(100), default=None)
    dedupe: Mapped[str] = mapped_column(String(8), default="none")
    # The dataset kind it completes into: labelled or unlabeled (migration 0008).
    kind: Mapped[str] = mapped_column(String(16), default="labelled", server_default="labelled")
    size: Mapped[int] = mapped_column(BigInteger)  # total bytes, declared when created
    part_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | completed
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Moved forward by every stored part; an upload idle past it is swept with its parts.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
