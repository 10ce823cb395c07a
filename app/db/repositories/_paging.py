"""One page of a query, with the total across all pages (the list endpoints' shape)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session


def paginate(
    session: Session, query: Select[Any], *, order_by: Any, limit: int, offset: int
) -> tuple[Sequence[Any], int]:
    """``query``'s rows ``offset`` to ``offset + limit`` in ``order_by`` order, and their total
    (counted over the same filtered query, so the two always agree)."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = session.scalars(query.order_by(order_by).limit(limit).offset(offset)).all()
    return rows, total or 0
