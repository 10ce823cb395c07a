from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORMModel, UTCDateTime
from app.db.models import ModelVersion

MODEL_EXAMPLE: dict[str, Any] = {
    "id": "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00",
    "name": "digits",
    "version": 2,
    "job_id": "5d0e6c1a-8f0b-4d3e-9a4c-1b2c3d4e5f60",
    "dataset_id": "3f8e4a52-3c1f-4f7b-9a53-2f0e2b7c9d11",
    "parent_id": None,
    "base_model": "timm:resnet18",
    "strategy": "finetune",
    "class_names": ["cat", "dog"],
    "metrics": {
        "val_accuracy": 0.95,
        "per_class_accuracy": {"cat": 0.96, "dog": 0.94},
        "confusion_matrix": [[24, 1], [1, 16]],
        "num_val_images": 42,
        "train_seconds": 81.2,
        "epochs": 5,
    },
    "lineage": {
        "base_model": "timm:resnet18",
        "pretrained": True,
        "dataset_sha256": "9b1c0f...e2",
        "job_spec": {"strategy": "finetune", "hyperparameters": {"epochs": 5}},
        "libraries": {"torch": "2.14.1", "timm": "1.0.31", "transferlab": "0.1.0"},
    },
    "created_at": "2026-11-29T10:05:00Z",
    "archived_at": None,
    "aliases": ["prod"],
    "tags": ["reviewed"],
}


class ModelOut(ORMModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [MODEL_EXAMPLE]})

    id: uuid.UUID
    name: str
    version: int
    job_id: uuid.UUID | None
    dataset_id: uuid.UUID | None
    parent_id: uuid.UUID | None = Field(description="the model version this one started from")
    base_model: str
    strategy: str
    class_names: list[str]
    metrics: dict[str, Any] = Field(
        description="validation accuracy, per-class accuracy, confusion matrix"
    )
    lineage: dict[str, Any] = Field(
        description="base model, dataset sha256, job spec, library versions"
    )
    created_at: UTCDateTime
    archived_at: UTCDateTime | None = Field(
        None, description="set while the version is archived: left out of lists unless asked"
    )
    aliases: list[str] = Field(
        default_factory=list, description="aliases of this model name that point at this version"
    )
    tags: list[str] = Field(default_factory=list)

    @classmethod
    def from_version(
        cls,
        row: ModelVersion,
        aliases: dict[uuid.UUID, list[str]],
        tags: dict[uuid.UUID, list[str]],
    ) -> ModelOut:
        view = cls.model_validate(row)
        view.aliases = aliases.get(row.id, [])
        view.tags = tags.get(row.id, [])
        return view


class AliasToVersion(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 3}]})

    version: int = Field(ge=1, le=10**9, description="a version number of this model")


class AliasToModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"model_id": MODEL_EXAMPLE["id"]}]}
    )

    model_id: uuid.UUID = Field(description="a version id (of this model)")


# Where an alias should point: exactly one of the two (a union of closed objects, so the schema
# itself says "one, not both").
AliasTarget = AliasToVersion | AliasToModel


class AliasEventOut(ORMModel):
    from_model_id: uuid.UUID | None = Field(description="null: the alias was created")
    to_model_id: uuid.UUID | None = Field(description="null: the alias was removed")
    actor: str = Field(description="name of the API key that made the move")
    at: UTCDateTime


ALIAS_EXAMPLE: dict[str, Any] = {
    "name": "digits",
    "alias": "prod",
    "model_id": MODEL_EXAMPLE["id"],
    "version": 2,
    "ref": "digits@prod",
    "updated_at": "2026-11-29T11:00:00Z",
    "updated_by": "deploy-bot",
    "history": [
        {
            "from_model_id": "7a1d9c3e-5b2f-4e6a-8c7d-0f1e2d3c4b5a",
            "to_model_id": MODEL_EXAMPLE["id"],
            "actor": "deploy-bot",
            "at": "2026-11-29T11:00:00Z",
        }
    ],
}


class AliasOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ALIAS_EXAMPLE]})

    name: str
    alias: str
    model_id: uuid.UUID
    version: int
    ref: str = Field(description="the reference to use in model URLs: name@alias")
    updated_at: UTCDateTime
    updated_by: str
    history: list[AliasEventOut] = Field(
        default_factory=list,
        description="the alias's moves, newest first (up to 100; empty in lists)",
    )


class ClassScore(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    filename: str
    top_k: list[ClassScore]


class PredictionOut(BaseModel):
    model_id: uuid.UUID
    predictions: list[ImagePrediction]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model_id": "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00",
                    "predictions": [
                        {
                            "filename": "cat.jpg",
                            "top_k": [
                                {"label": "cat", "probability": 0.93},
                                {"label": "dog", "probability": 0.07},
                            ],
                        }
                    ],
                }
            ]
        }
    }


class ImageEmbedding(BaseModel):
    filename: str
    vector: list[float]


class EmbeddingOut(BaseModel):
    model_id: uuid.UUID
    dimension: int = Field(description="length of every vector")
    embeddings: list[ImageEmbedding]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model_id": "0b6f2d7e-1a7c-4b8e-8a39-7e2f4c1d9a00",
                    "dimension": 4,
                    "embeddings": [
                        {"filename": "cat.jpg", "vector": [0.0, 1.73, 0.41, 0.02]},
                    ],
                }
            ]
        }
    }
