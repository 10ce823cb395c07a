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
    "kind": "labelled",
    "num_classes": 2,
    "num_images": 20,
    "size_bytes": 10240,
    "created_at": "2026-11-29T10:00:00Z",
    "report": {
        "classes": ["cat", "dog"],
        "splits": {"train": {"cat": 10, "dog": 9}},
        "rejected": [{"path": "dog/broken.jpg", "reason": "corrupt or truncated image"}],
        "duplicates": {
            "hash": "pHash 256 bit (imagehash.phash, hash_size=16), also of the border-trimmed "
            "content",
            "max_distance": 20,
            "exact": {"groups": 1, "images": 2, "redundant": 1, "within_class": 1,
                      "across_classes": 0, "across_splits": 0, "examples": {}},
            "near": {"groups": 2, "images": 4, "redundant": 2, "within_class": 1,
                     "across_classes": 0, "across_splits": 1, "examples": {}},
        },
        "leakage": {"val_images": 1, "val_total": 4, "fraction": 0.25, "exact": 0,
                    "examples": [{"val": "val/cat/7.jpg", "train": ["train/cat/3.jpg"]}]},
        "dedupe": {"mode": "none", "removed": 0, "examples": []},
        "statistics": {
            "sizes": {"shorter_side_histogram": {"128-255": 19},
                      "most_common": [{"size": "200x150", "count": 12}],
                      "width": {"min": 180, "median": 200, "max": 240},
                      "height": {"min": 150, "median": 150, "max": 200}},
            "modes": {"RGB": 19},
            "class_balance": {"train": {"largest": {"class": "cat", "images": 10},
                                        "smallest": {"class": "dog", "images": 9},
                                        "imbalance_ratio": 1.11}},
        },
        "warnings": [{"code": "val_leakage", "message": "1 of 4 validation image(s) (25.0%) "
                      "have a copy in train; validation scores will be optimistic", "count": 1,
                      "examples": ["val/cat/7.jpg"]}],
    },
}  # fmt: skip


class DatasetOut(ORMModel):
    id: uuid.UUID
    name: str
    sha256: str = Field(description="sha256 over the accepted images' paths and bytes")
    format: str = Field(description="archive format: zip or tar")
    kind: str = Field(
        "labelled",
        description="labelled (classes, splits) or unlabeled (images only, a domain-adaptation "
        "target: its report has no classes, splits or leakage)",
    )
    num_classes: int
    num_images: int
    size_bytes: int
    report: dict[str, Any] = Field(
        description="classes, images per class per split, each rejected file with its reason; "
        "duplicates (exact and near, within and across classes and splits), leakage (val images "
        "with a copy in train), what dedupe removed, statistics (sizes, modes, class balance) "
        "and warnings"
    )
    created_at: UTCDateTime

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [DATASET_EXAMPLE]}
    )
