from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORMModel, UTCDateTime

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
