"""The registry's endpoints: aliases, tags, archive and delete of model versions.

Scopes: reading is ``read``; moving an alias, tagging, archiving and deleting are ``train``
(the scope that makes versions and deletes datasets; ``admin`` allows everything).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, status

from app.api.auth import require_scope
from app.api.deps import (
    CurrentPrincipal,
    ModelCacheDep,
    ResolverDep,
    SessionDep,
    SettingsDep,
    ValidModel,
)
from app.api.schemas.common import SLUG_PATTERN, error_responses
from app.api.schemas.models import (
    AliasEventOut,
    AliasOut,
    AliasTarget,
    AliasToModel,
    AliasToVersion,
    ModelOut,
)
from app.db.repositories import models as models_repo
from app.services import registry as service

router = APIRouter(prefix="/v1/models", tags=["registry"])

ModelName = Path(
    pattern=SLUG_PATTERN, max_length=100, description="the model's name", examples=["digits"]
)
AliasName = Path(
    pattern=SLUG_PATTERN, max_length=100, description="a slug, e.g. prod", examples=["prod"]
)
TagName = Path(
    pattern=SLUG_PATTERN, max_length=100, description="a slug, e.g. reviewed", examples=["reviewed"]
)


def _alias_out(view: service.AliasView) -> AliasOut:
    row = view.alias
    return AliasOut(
        name=row.name,
        alias=row.alias,
        model_id=row.model_id,
        version=view.version,
        ref=f"{row.name}@{row.alias}",
        updated_at=row.updated_at,
        updated_by=row.updated_by,
        history=[AliasEventOut.model_validate(e) for e in view.history],
    )


def _model_out(session: SessionDep, model_id) -> ModelOut:
    row = models_repo.get(session, model_id)
    assert row is not None
    aliases, tags = service.labels(session, [row])
    return ModelOut.from_version(row, aliases, tags)


@router.get(
    "/{name}/aliases",
    response_model=list[AliasOut],
    responses=error_responses(422),
    summary="List the aliases of a model name",
    dependencies=[require_scope("read")],
)
def list_aliases(session: SessionDep, name: str = ModelName) -> list[AliasOut]:
    return [_alias_out(v) for v in service.list_aliases(session, name)]


@router.get(
    "/{name}/aliases/{alias}",
    response_model=AliasOut,
    responses=error_responses(404, 422),
    summary="An alias: the version it points at, and its history of moves",
    dependencies=[require_scope("read")],
)
def get_alias(session: SessionDep, name: str = ModelName, alias: str = AliasName) -> AliasOut:
    return _alias_out(service.alias_view(session, name, alias))


@router.put(
    "/{name}/aliases/{alias}",
    response_model=AliasOut,
    responses=error_responses(404, 409, 422),
    summary="Point an alias at a version (atomically; the move is recorded)",
    description=(
        'Body: `{"version": 3}` or `{"model_id": "<version id>"}` (a version of this model). '
        "Creates the alias if needed. Predictions by `name@alias` in this process follow at "
        "once; other API processes follow within `TRANSFERLAB_REGISTRY_CACHE_S`. An archived "
        "version cannot be aliased (409 `model_archived`)."
    ),
    dependencies=[require_scope("train")],
)
def put_alias(
    target: Annotated[
        AliasTarget,
        Body(examples=[{"version": 3}, {"model_id": "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00"}]),
    ],
    session: SessionDep,
    resolver: ResolverDep,
    principal: CurrentPrincipal,
    name: str = ModelName,
    alias: str = AliasName,
) -> AliasOut:
    version = target.version if isinstance(target, AliasToVersion) else None
    model_id = target.model_id if isinstance(target, AliasToModel) else None
    view = service.set_alias(session, name, alias, version=version, model_id=model_id, by=principal)
    resolver.after_commit(session, lambda: resolver.forget_alias(name, alias))
    return _alias_out(view)


@router.delete(
    "/{name}/aliases/{alias}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 422),
    summary="Remove an alias (recorded in its history)",
    dependencies=[require_scope("train")],
)
def delete_alias(
    session: SessionDep,
    resolver: ResolverDep,
    principal: CurrentPrincipal,
    name: str = ModelName,
    alias: str = AliasName,
) -> None:
    service.remove_alias(session, name, alias, by=principal)
    resolver.after_commit(session, lambda: resolver.forget_alias(name, alias))


@router.put(
    "/{model_id}/tags/{tag}",
    response_model=ModelOut,
    responses=error_responses(404, 422),
    summary="Tag a version (idempotent); GET /v1/models?tag= filters by it",
    dependencies=[require_scope("train")],
)
def put_tag(model: ValidModel, session: SessionDep, tag: str = TagName) -> ModelOut:
    service.set_tag(session, model.id, tag, present=True)
    return _model_out(session, model.id)


@router.delete(
    "/{model_id}/tags/{tag}",
    response_model=ModelOut,
    responses=error_responses(404, 422),
    summary="Remove a tag from a version (idempotent)",
    dependencies=[require_scope("train")],
)
def delete_tag(model: ValidModel, session: SessionDep, tag: str = TagName) -> ModelOut:
    service.set_tag(session, model.id, tag, present=False)
    return _model_out(session, model.id)


@router.post(
    "/{model_id}/archive",
    response_model=ModelOut,
    responses=error_responses(404, 409, 422),
    summary="Archive a version: hidden from lists unless include_archived=true",
    description=(
        "An archived version still resolves and predicts by id or name:version (archiving "
        "tidies lists; delete stops serving). Refused (409 `model_aliased`) while an alias "
        "points at it."
    ),
    dependencies=[require_scope("train")],
)
def archive(model: ValidModel, session: SessionDep) -> ModelOut:
    service.set_archived(session, model.id, True)
    return _model_out(session, model.id)


@router.post(
    "/{model_id}/unarchive",
    response_model=ModelOut,
    responses=error_responses(404, 422),
    summary="Bring an archived version back into lists",
    dependencies=[require_scope("train")],
)
def unarchive(model: ValidModel, session: SessionDep) -> ModelOut:
    service.set_archived(session, model.id, False)
    return _model_out(session, model.id)


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409, 422),
    summary="Delete a version and its files (409 model_aliased while an alias points at it)",
    dependencies=[require_scope("train")],
)
def delete_model(
    model: ValidModel,
    session: SessionDep,
    settings: SettingsDep,
    resolver: ResolverDep,
    cache: ModelCacheDep,
) -> None:
    key = service.delete_version(session, model.id)
    session.commit()
    # After the commit, as for datasets: a rollback must not leave a row without its weights.
    resolver.forget_version(model)
    cache.forget(str(model.id))
    settings.artifacts.delete(key)
