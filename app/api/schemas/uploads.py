from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import SLUG_PATTERN, UTCDateTime
from app.storage.datasets import DATASET_KINDS

UPLOAD_CREATE_EXAMPLE: dict[str, Any] = {
    "size": 1073741824,
    "part_size": 8388608,
    "filename": "pets.tar.gz",
    "name": "pets",
    "dedupe": "near",
    "kind": "labelled",
}

UPLOAD_EXAMPLE: dict[str, Any] = {
    "id": "0b7e5d2c-9c1e-4a57-8f0e-6d2c1b3a4f59",
    "filename": "pets.tar.gz",
    "name": "pets",
    "dedupe": "near",
    "kind": "labelled",
    "size": 1073741824,
    "part_size": 8388608,
    "status": "open",
    "dataset_id": None,
    "parts_total": 128,
    "parts": [{"number": 1, "size": 8388608, "sha256": "5f1c...9a"}],
    "missing": [2, 3, 4],
    "bytes_received": 8388608,
    "created_at": "2026-11-29T10:00:00Z",
    "expires_at": "2026-11-30T10:00:05Z",
}


class UploadCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [UPLOAD_CREATE_EXAMPLE]}
    )

    size: int = Field(ge=1, description="the archive's total size in bytes")
    part_size: int | None = Field(
        None,
        ge=64 * 2**10,
        le=64 * 2**20,
        description="bytes per part (the last part holds the rest); default 8 MiB",
    )
    filename: str = Field("dataset", max_length=300, description="for the default name")
    name: str | None = Field(None, pattern=SLUG_PATTERN, max_length=100)
    dedupe: Literal["none", "exact", "near"] = Field(
        "none", description="as for POST /v1/datasets, applied when the upload completes"
    )
    kind: str = Field(
        "labelled",
        max_length=32,
        description="as for POST /v1/datasets: labelled, or unlabeled (images in any folder "
        "layout, a domain-adaptation target); anything else is 422 invalid_dataset_kind",
        examples=["unlabeled"],
        # Documented as the two values (clients and fuzzers see them); checked by the service,
        # so that anything else is 422 invalid_dataset_kind rather than a validation_error.
        json_schema_extra={"enum": list(DATASET_KINDS)},
    )


class PartOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"number": 3, "size": 8388608, "sha256": "9e2d...c1"}]}
    )

    number: int
    size: int
    sha256: str


class UploadOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [UPLOAD_EXAMPLE]})

    id: uuid.UUID
    filename: str
    name: str | None
    dedupe: str
    kind: str = Field("labelled", description="the kind of dataset it completes into")
    size: int
    part_size: int
    status: Literal["open", "completed"]
    dataset_id: uuid.UUID | None = Field(None, description="once completed")
    parts_total: int
    parts: list[PartOut] = Field(description="the parts stored, each whole and verified")
    missing: list[int] = Field(description="part numbers still to send")
    bytes_received: int
    created_at: UTCDateTime
    expires_at: UTCDateTime = Field(
        description="swept with its parts if idle until then; each stored part extends it"
    )
