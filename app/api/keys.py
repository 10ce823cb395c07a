from __future__ import annotations

from fastapi import APIRouter, Path, Request, status

from app.api.auth import require_scope
from app.api.deps import SessionDep
from app.api.schemas.common import error_responses
from app.api.schemas.keys import KeyCreate, KeyCreated, KeyOut
from app.services import keys as service

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[require_scope("admin")])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses=error_responses(400, 401, 403, 413, 422),
    summary="Create an API key (admin)",
    description="Scopes: `read` (every GET), `train` (upload and delete datasets, submit and "
    "cancel jobs), `predict` (prediction), `admin` (everything, and keys). The key is in this "
    "response only; the service keeps its hash.",
)
def create_key(body: KeyCreate, session: SessionDep) -> KeyCreated:
    row, secret = service.create_key(session, name=body.name, scopes=body.scopes)
    return KeyCreated.model_validate({**KeyOut.model_validate(row).model_dump(), "key": secret})


@router.get(
    "",
    response_model=list[KeyOut],
    responses=error_responses(401, 403),
    summary="List API keys (admin); never their secrets",
)
def list_keys(session: SessionDep) -> list[KeyOut]:
    return [KeyOut.model_validate(k) for k in service.list_keys(session)]


@router.delete(
    "/{key}",
    response_model=KeyOut,
    responses=error_responses(401, 403, 404),
    summary="Revoke an API key (admin), by id or prefix",
    description="Refused at once by this API process, and by every other one within "
    "`TRANSFERLAB_API_KEY_CACHE_S` (10 s by default).",
)
def revoke_key(
    request: Request,
    session: SessionDep,
    key: str = Path(max_length=64, description="the key's id or prefix"),
) -> KeyOut:
    row = service.revoke_key(session, key)
    session.commit()
    request.app.state.key_cache.clear()
    return KeyOut.model_validate(row)
