from __future__ import annotations

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class ModelName(Base):
    """The last version number handed out under a model name, deleted versions included, so
    that ``name:N`` names one model for ever: a deployment pinned to ``digits:3`` must not start
    serving another model because version 3 was deleted and its number given again."""

    __tablename__ = "model_names"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer)
