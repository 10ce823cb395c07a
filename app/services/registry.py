"""The registry: aliases that point at versions (with history), tags, archive and delete.

Every alias move and version delete first bumps the registry generation (``bump_generation``):
that serialises them, so each move's history names the version it really replaced, and it tells
API processes' resolvers (app.serving.resolver) that their cached aliases may be stale.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import ModelAlias, ModelAliasEvent, ModelVersion
from app.db.repositories import models as models_repo
from app.db.repositories import registry as repo
from app.errors import Conflict, InvalidInput, NotFound
from app.services.keys import Principal
from app.services.models import ModelNotFound

HISTORY_LIMIT = 100


class AliasNotFound(NotFound):
    code = "alias_not_found"


class ModelAliased(Conflict):
    code = "model_aliased"


class ModelArchived(Conflict):
    code = "model_archived"


class AliasTargetInvalid(InvalidInput):
    code = "alias_target_invalid"


@dataclass(frozen=True)
class AliasView:
    alias: ModelAlias
    version: int
    history: Sequence[ModelAliasEvent]


def labels(
    session: Session, rows: Sequence[ModelVersion]
) -> tuple[dict[uuid.UUID, list[str]], dict[uuid.UUID, list[str]]]:
    """({id: aliases}, {id: tags}) of ``rows``, in two queries whatever their number."""
    ids = [r.id for r in rows]
    return repo.aliases_of(session, ids), repo.tags_of(session, ids)


def _target(
    session: Session, name: str, *, version: int | None, model_id: uuid.UUID | None
) -> ModelVersion:
    if (version is None) == (model_id is None):
        raise AliasTargetInvalid(
            "give exactly one of 'version' (a number) or 'model_id' (a version id)",
            details={"field": "version"},
        )
    if model_id is not None:
        row = models_repo.get(session, model_id)
        if row is None:
            raise ModelNotFound(f"model version {model_id} does not exist")
        if row.name != name:
            raise AliasTargetInvalid(
                f"version {model_id} belongs to model {row.name!r}, not {name!r}: an alias of "
                f"{name!r} can only point at one of its own versions",
                details={"field": "model_id", "model_name": row.name},
            )
        return row
    assert version is not None
    row = models_repo.get_by_version(session, name, version)
    if row is None:
        raise ModelNotFound(
            f"model {name!r} has no version {version}; GET /v1/models?name={name} lists them",
            details={"name": name, "version": version},
        )
    return row


def set_alias(
    session: Session,
    name: str,
    alias: str,
    *,
    version: int | None,
    model_id: uuid.UUID | None,
    by: Principal,
) -> AliasView:
    """Point ``name@alias`` at a version (creating the alias if needed), recording the move.

    Atomic: one transaction updates the alias row and appends its history; a concurrent request
    resolves the old version or the new one, never neither.
    """
    repo.bump_generation(session)  # first: the lock that orders concurrent moves
    row = _target(session, name, version=version, model_id=model_id)
    if row.archived_at is not None:
        raise ModelArchived(
            f"{name}:{row.version} is archived; unarchive it before an alias points at it",
            details={"model_id": str(row.id)},
        )
    current = repo.get_alias(session, name, alias)
    previous = current.model_id if current is not None else None
    if previous != row.id:
        if current is None:
            current = ModelAlias(name=name, alias=alias, model_id=row.id)
        current.model_id = row.id
        current.updated_at = utcnow()
        current.updated_by = by.name
        repo.put_alias(session, current, _event(name, alias, previous, row.id, by))
    return alias_view(session, name, alias)


def remove_alias(session: Session, name: str, alias: str, *, by: Principal) -> None:
    repo.bump_generation(session)
    current = repo.get_alias(session, name, alias)
    if current is None:
        raise _no_alias(name, alias)
    repo.delete_alias(session, current, _event(name, alias, current.model_id, None, by))


def alias_view(session: Session, name: str, alias: str) -> AliasView:
    current = repo.get_alias(session, name, alias)
    if current is None:
        raise _no_alias(name, alias)
    target = models_repo.get(session, current.model_id)
    assert target is not None  # the foreign key (RESTRICT) keeps it
    return AliasView(current, target.version, repo.history(session, name, alias, HISTORY_LIMIT))


def list_aliases(session: Session, name: str) -> list[AliasView]:
    rows = repo.list_aliases(session, name)
    versions = {r.model_id: v.version for r in rows if (v := models_repo.get(session, r.model_id))}
    return [AliasView(r, versions[r.model_id], ()) for r in rows]


def set_tag(session: Session, model_id: uuid.UUID, tag: str, *, present: bool) -> None:
    if present:
        repo.add_tag(session, model_id, tag)
    else:
        repo.remove_tag(session, model_id, tag)


def set_archived(session: Session, model_id: uuid.UUID, archived: bool) -> ModelVersion:
    repo.bump_generation(session)  # ordered with alias moves: never archived and aliased at once
    row = _version(session, model_id)
    if archived:
        _refuse_if_aliased(session, row, "archive")
        row.archived_at = row.archived_at or utcnow()
    else:
        row.archived_at = None
    session.flush()
    return row


def delete_version(session: Session, model_id: uuid.UUID) -> str:
    """Delete a version's row; returns its artifact key, whose files the caller removes after the
    commit (a rollback must not leave a row without weights)."""
    repo.bump_generation(session)
    row = _version(session, model_id)
    _refuse_if_aliased(session, row, "delete")
    key = row.artifact_key
    models_repo.delete(session, row)
    return key


def _version(session: Session, model_id: uuid.UUID) -> ModelVersion:
    row = models_repo.get(session, model_id)
    if row is None:
        raise ModelNotFound(f"model version {model_id} does not exist")
    return row


def _refuse_if_aliased(session: Session, row: ModelVersion, what: str) -> None:
    aliases = repo.aliases_of(session, [row.id]).get(row.id, [])
    if aliases:
        refs = ", ".join(f"{row.name}@{a}" for a in aliases)
        raise ModelAliased(
            f"cannot {what} {row.name}:{row.version}: {refs} point(s) at it; move or remove "
            f"those aliases first (PUT/DELETE /v1/models/{row.name}/aliases/<alias>)",
            details={"aliases": aliases, "model_id": str(row.id)},
        )


def _event(
    name: str, alias: str, src: uuid.UUID | None, dst: uuid.UUID | None, by: Principal
) -> ModelAliasEvent:
    return ModelAliasEvent(
        name=name,
        alias=alias,
        from_model_id=src,
        to_model_id=dst,
        actor=by.name,
        actor_key_id=by.key_id,
        at=utcnow(),
    )


def _no_alias(name: str, alias: str) -> AliasNotFound:
    return AliasNotFound(
        f"model {name!r} has no alias {alias!r}; GET /v1/models/{name}/aliases lists them",
        details={"name": name, "alias": alias},
    )
