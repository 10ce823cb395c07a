from __future__ import annotations

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import FileResponse

from app.api.auth import require_scope
from app.api.deps import ModelCacheDep, SessionDep, SettingsDep, ValidModel
from app.api.schemas.common import MAX_OFFSET, ZIP_RESPONSE, Page, error_responses
from app.api.schemas.models import ClassScore, ImagePrediction, ModelOut, PredictionOut
from app.db.repositories import models as repo
from app.errors import PayloadTooLarge
from app.naming import slugify
from app.services import models as service
from app.serving.predict import predict_uploads

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get(
    "",
    response_model=Page[ModelOut],
    responses=error_responses(422),
    summary="List model versions, newest first",
    dependencies=[require_scope("read")],
)
def list_models(
    session: SessionDep,
    name: str | None = Query(None, max_length=100, description="only versions of this model name"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> Page[ModelOut]:
    rows, total = repo.list_(session, name=name, limit=limit, offset=offset)
    items = [ModelOut.model_validate(r) for r in rows]
    return Page[ModelOut](items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    responses=error_responses(404),
    summary="A model version: classes, metrics and lineage",
    dependencies=[require_scope("read")],
)
def get_model(model: ValidModel) -> ModelOut:
    return ModelOut.model_validate(model)


@router.get(
    "/{model_id}/download",
    response_class=FileResponse,
    responses={200: ZIP_RESPONSE, **error_responses(404)},
    summary="Download the model: model.safetensors + model.json (architecture, classes, "
    "preprocessing) in a zip",
    dependencies=[require_scope("read")],
)
def download_model(model: ValidModel, settings: SettingsDep) -> FileResponse:
    path = service.download_archive(model, settings.artifacts)
    # The name is a slug for every version made since names are validated; slugify() again for
    # rows older than that, so no quote or slash reaches the header.
    filename = f"{slugify(model.name, default='model')}-v{model.version}.zip"
    return FileResponse(path, media_type="application/zip", filename=filename)


@router.post(
    "/{model_id}/predict",
    response_model=PredictionOut,
    responses=error_responses(400, 404, 413, 422),
    summary="Classify one or several images",
    dependencies=[require_scope("predict")],
    description=(
        "Multipart field `files`, repeated once per image. Each image gets the top-k classes "
        "with probabilities, computed with exactly the model's evaluation preprocessing. "
        "Example: `curl -F files=@a.png -F files=@b.png localhost:8000/v1/models/<id>/predict`"
    ),
)
def predict(
    model: ValidModel,
    settings: SettingsDep,
    cache: ModelCacheDep,
    files: list[UploadFile] = File(description="images (JPEG, PNG, BMP, GIF, WEBP, TIFF)"),
    top_k: int = Query(5, ge=1, le=1000),
) -> PredictionOut:
    payload: list[tuple[str, bytes]] = []
    total = 0
    for upload in files:
        data = upload.file.read(settings.max_predict_bytes + 1)
        total += len(data)
        if total > settings.max_predict_bytes:
            raise PayloadTooLarge(
                f"images in one request may total at most {settings.max_predict_bytes} bytes",
                code="predict_too_large",
                details={"limit_bytes": settings.max_predict_bytes},
            )
        payload.append((upload.filename or f"image{len(payload)}", data))
    results = predict_uploads(
        cache,
        str(model.id),
        settings.artifacts.path(model.artifact_key),
        payload,
        top_k=top_k,
        max_files=settings.max_predict_files,
        max_pixels=settings.max_image_pixels,
    )
    return PredictionOut(
        model_id=model.id,
        predictions=[
            ImagePrediction(
                filename=name, top_k=[ClassScore(label=c, probability=p) for c, p in scores]
            )
            for name, scores in results
        ],
    )
