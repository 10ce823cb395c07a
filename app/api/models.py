from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.api.auth import require_scope
from app.api.deps import (
    ServedModel,
    ServingDep,
    SessionDep,
    SettingsDep,
    ValidModel,
)
from app.api.schemas.common import MAX_OFFSET, ZIP_RESPONSE, Page, error_responses
from app.api.schemas.models import (
    ClassScore,
    EmbeddingOut,
    ImageEmbedding,
    ImagePrediction,
    ModelOut,
    PredictionOut,
)
from app.db.repositories import models as repo
from app.errors import PayloadTooLarge
from app.naming import slugify
from app.services import models as service
from app.services import registry as registry_service
from app.serving.predict import embed_uploads, predict_uploads

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
    tag: str | None = Query(None, max_length=100, description="only versions with this tag"),
    include_archived: bool = Query(False, description="archived versions too"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> Page[ModelOut]:
    rows, total = repo.list_(
        session, name=name, tag=tag, include_archived=include_archived, limit=limit, offset=offset
    )
    aliases, tags = registry_service.labels(session, rows)
    items = [ModelOut.from_version(r, aliases, tags) for r in rows]
    return Page[ModelOut](items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    responses=error_responses(404),
    summary="A model version: classes, metrics, lineage, aliases and tags",
    description="`{model_id}` is a version id, `name:version` or `name@alias`.",
    dependencies=[require_scope("read")],
)
def get_model(model: ValidModel, session: SessionDep) -> ModelOut:
    row = service.get_model(session, model.id)
    aliases, tags = registry_service.labels(session, [row])
    return ModelOut.from_version(row, aliases, tags)


@router.get(
    "/{model_id}/download",
    response_class=FileResponse,
    responses={
        200: {
            "description": "a zip archive, or with format=onnx the ONNX file",
            "content": {
                **ZIP_RESPONSE["content"],
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(404, 409),
    },
    summary="Download the model: model.safetensors + model.json (architecture, classes, "
    "preprocessing) in a zip, or with format=onnx its ONNX export",
    description=(
        "`format=onnx` answers `model.onnx` (dynamic batch axis, input `images` NCHW float32 "
        "normalised as model.json says, output `logits`); 409 `onnx_unavailable` for a version "
        "made before exports or whose export failed (its metrics.onnx says why)."
    ),
    dependencies=[require_scope("read")],
)
def download_model(
    model: ValidModel,
    settings: SettingsDep,
    format: Literal["zip", "onnx"] = Query("zip", description="zip (safetensors) or onnx"),
) -> FileResponse:
    # The name is a slug for every version made since names are validated; slugify() again for
    # rows older than that, so no quote or slash reaches the header.
    stem = f"{slugify(model.name, default='model')}-v{model.version}"
    if format == "onnx":
        onnx_path = service.onnx_file(model, settings.artifacts)
        return FileResponse(
            onnx_path, media_type="application/octet-stream", filename=f"{stem}.onnx"
        )
    path = service.download_archive(model, settings.artifacts)
    return FileResponse(path, media_type="application/zip", filename=f"{stem}.zip")


PREDICT_FILES = File(description="images (JPEG, PNG, BMP, GIF, WEBP, TIFF)")


async def read_uploads(files: list[UploadFile], limit_bytes: int) -> list[tuple[str, bytes]]:
    payload: list[tuple[str, bytes]] = []
    total = 0
    for upload in files:
        # In memory (most images): read at once; spooled to disk: read on a worker thread.
        data = await upload.read(limit_bytes + 1)
        total += len(data)
        if total > limit_bytes:
            raise PayloadTooLarge(
                f"images in one request may total at most {limit_bytes} bytes",
                code="predict_too_large",
                details={"limit_bytes": limit_bytes},
            )
        payload.append((upload.filename or f"image{len(payload)}", data))
    return payload


@router.post(
    "/{model_id}/predict",
    response_model=PredictionOut,
    responses=error_responses(400, 404, 413, 422, 503),
    summary="Classify one or several images",
    dependencies=[require_scope("predict")],
    description=(
        "Multipart field `files`, repeated once per image. Each image gets the top-k classes "
        "with probabilities, computed with exactly the model's evaluation preprocessing. "
        "Concurrent requests for one model are batched into one forward pass; when too many "
        "images wait, the answer is 503 `overloaded` with a `Retry-After` header. "
        "Example: `curl -F files=@a.png -F files=@b.png localhost:8000/v1/models/<id>/predict`"
    ),
)
async def predict(
    model: ServedModel,
    serving: ServingDep,
    files: list[UploadFile] = PREDICT_FILES,
    top_k: int = Query(5, ge=1, le=1000),
) -> Response:
    # async: the forward pass runs on the model's inference thread and the request awaits it;
    # see app/serving/predict.py for what else runs where.
    settings = serving.settings
    results = await predict_uploads(
        serving.cache,
        str(model.id),
        serving.artifacts.path(model.artifact_key),
        await read_uploads(files, settings.max_predict_bytes),
        top_k=top_k,
        max_files=settings.max_predict_files,
        max_pixels=settings.max_image_pixels,
    )
    return await json_response(
        lambda: PredictionOut(
            model_id=model.id,
            predictions=[
                ImagePrediction(
                    filename=name, top_k=[ClassScore(label=c, probability=p) for c, p in scores]
                )
                for name, scores in results
            ],
        ),
        items=sum(len(scores) for _, scores in results),
    )


@router.post(
    "/{model_id}/embed",
    response_model=EmbeddingOut,
    responses=error_responses(400, 404, 413, 422, 503),
    summary="Embed one or several images: the pre-logits vector of each",
    dependencies=[require_scope("predict")],
    description=(
        "Multipart field `files`, repeated once per image, as for `predict`. Each image gets the "
        "vector the model's classifier reads (for a linear probe on an intermediate stage, the "
        "pooled features its head reads), with the model's evaluation preprocessing; the same "
        "features an `extract_features` job computes. Batched with concurrent requests. "
        "Example: `curl -F files=@a.png localhost:8000/v1/models/<id>/embed`"
    ),
)
async def embed(
    model: ServedModel,
    serving: ServingDep,
    files: list[UploadFile] = PREDICT_FILES,
) -> Response:
    settings = serving.settings
    results = await embed_uploads(
        serving.cache,
        str(model.id),
        serving.artifacts.path(model.artifact_key),
        await read_uploads(files, settings.max_predict_bytes),
        max_files=settings.max_predict_files,
        max_pixels=settings.max_image_pixels,
    )
    return await json_response(
        lambda: EmbeddingOut(
            model_id=model.id,
            dimension=len(results[0][1]),
            embeddings=[ImageEmbedding(filename=name, vector=vector) for name, vector in results],
        ),
        items=sum(len(vector) for _, vector in results),
    )


# Above this many scores or vector entries a response is built on a worker thread: 64 images x
# top_k 1000 took about 0.25 s to build and serialise, which must not stall the event loop.
LOOP_RESPONSE_ITEMS = 1024


async def json_response(build: Callable[[], BaseModel], *, items: int) -> Response:
    """``build()`` serialised (the route's response_model documents it). Returning the body
    ourselves also spares FastAPI's second validation of the model on the loop."""

    def render() -> Response:
        return Response(build().model_dump_json(), media_type="application/json")

    return render() if items <= LOOP_RESPONSE_ITEMS else await run_in_threadpool(render)
