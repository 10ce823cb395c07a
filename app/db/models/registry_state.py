from __future__ import annotations

from sqlalchemy import Integer
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class RegistryState(Base):
    """One row: a generation bumped by every alias move and version delete, in their transaction.

    API processes cache alias resolutions; each reads this one integer at most once per
    ``TRANSFERLAB_REGISTRY_CACHE_S`` and drops its cached resolutions when it changed (app.serving.
    resolver). The UPDATE also takes the row's lock, so concurrent moves run one after another and
    each one's history records the version it really replaced.
    """

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(Integer, default=0)
