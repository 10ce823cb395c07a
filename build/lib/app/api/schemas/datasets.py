from __future__ import annotations

import uuid
from typing import Any

from pydantic import ConfigDict, Field

from app.api.schemas.common import ORMModel, UTCDateTime

DATASET_EXAMPLE: dict[str, Any] = {
    "id": "3f8e4a52-3c1f-4f7b-9a53-2f0e2b7c9d11",
    "name": "digits",
    "sha256": "9b1c0f...e2",
    "format": "zip",
    "num_classes": 2,
    "num_images": 20,
    "size_bytes": 10240,
    "created_at": "2026-11-29T10:00:00Z",
    "report": {
        "classes": ["cat", "dog"],
        "splits": {"train": {"cat": 10, "dog": 9}},
        "rejected": [{"path": "dog/broken.jpg", "reason": "corrupt or truncated image"}],
    },
}


class DatasetOut(ORMModel):
    id: uuid.UUID
    name: str
    sha256: str = Field(description="sha256 over the accepted images' paths and bytes")
    format: str = Field(description="archive format: zip or tar")
    num_classes: int
    num_images: int
    size_bytes: int
    report: dict[str, Any] = Field(
        description="classes, images per class per split, and each rejected file with its reason"
    )
    created_at: UTCDateTime

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [DATASET_EXAMPLE]}
    )
