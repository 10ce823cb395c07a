"""Registry queries: aliases and their history, tags, the registry generation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db.models import ModelAlias, ModelAliasEvent, ModelTag, RegistryState

STATE_ROW = 1


def bump_generation(session: Session) -> int:
    """Add one to the registry generation and return it. Run it first in a transaction that moves
    an alias or deletes a version: on Postgres the UPDATE holds the row's lock until commit, so
    such transactions run one at a time (SQLite serialises every writer anyway)."""
    changed = session.execute(
        update(RegistryState)
        .where(RegistryState.id == STATE_ROW)
        .values(generation=RegistryState.generation + 1)
        .returning(RegistryState.generation)
    ).scalar_one_or_none()
    if changed is None:  # a database made without migration 0006's row
        session.add(RegistryState(id=STATE_ROW, generation=1))
        session.flush()
        return 1
    return int(changed)


def generation(session: Session) -> int:
    value = session.scalar(select(RegistryState.generation).where(RegistryState.id == STATE_ROW))
    return int(value or 0)


def get_alias(session: Session, name: str, alias: str) -> ModelAlias | None:
    return session.get(ModelAlias, (name, alias))


def alias_target(session: Session, name: str, alias: str) -> uuid.UUID | None:
    return session.scalar(
        select(ModelAlias.model_id).where(ModelAlias.name == name, ModelAlias.alias == alias)
    )


def list_aliases(session: Session, name: str) -> Sequence[ModelAlias]:
    return session.scalars(
        select(ModelAlias).where(ModelAlias.name == name).order_by(ModelAlias.alias)
    ).all()


def aliases_of(session: Session, model_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """{version id: its alias names, sorted} for ``model_ids``, in one query."""
    found: dict[uuid.UUID, list[str]] = {}
    if not model_ids:
        return found
    rows = session.execute(
        select(ModelAlias.model_id, ModelAlias.alias)
        .where(ModelAlias.model_id.in_(model_ids))
        .order_by(ModelAlias.alias)
    )
    for model_id, alias in rows:
        found.setdefault(model_id, []).append(alias)
    return found


def put_alias(session: Session, row: ModelAlias, event: ModelAliasEvent) -> None:
    session.add(row)
    session.add(event)
    session.flush()


def delete_alias(session: Session, row: ModelAlias, event: ModelAliasEvent) -> None:
    session.delete(row)
    session.add(event)
    session.flush()


def history(session: Session, name: str, alias: str, limit: int) -> Sequence[ModelAliasEvent]:
    return session.scalars(
        select(ModelAliasEvent)
        .where(ModelAliasEvent.name == name, ModelAliasEvent.alias == alias)
        .order_by(ModelAliasEvent.id.desc())
        .limit(limit)
    ).all()


def tags_of(session: Session, model_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """{version id: its tags, sorted} for ``model_ids``, in one query."""
    found: dict[uuid.UUID, list[str]] = {}
    if not model_ids:
        return found
    rows = session.execute(
        select(ModelTag.model_id, ModelTag.tag)
        .where(ModelTag.model_id.in_(model_ids))
        .order_by(ModelTag.tag)
    )
    for model_id, tag in rows:
        found.setdefault(model_id, []).append(tag)
    return found


def add_tag(session: Session, model_id: uuid.UUID, tag: str) -> None:
    if session.get(ModelTag, (model_id, tag)) is None:
        session.add(ModelTag(model_id=model_id, tag=tag))
        session.flush()


def remove_tag(session: Session, model_id: uuid.UUID, tag: str) -> bool:
    result = session.execute(
        delete(ModelTag).where(ModelTag.model_id == model_id, ModelTag.tag == tag)
    )
    return bool(getattr(result, "rowcount", 0))
