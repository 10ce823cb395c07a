"""TransferLab's ML core: transfer learning on images with timm backbones.

A plain library (torch, torchvision, timm, safetensors, PIL, numpy): of the project it imports only
``app.pixels`` (the PIL half of preprocessing, kept free of torch for serving's lane processes),
reads no environment variables and takes frozen dataclasses as inputs.
"""

from app.engine.callbacks import Callback
from app.engine.data import create_eval_transform
from app.engine.embed import FEATURE_JOB, FEATURE_JOB_OPTIONS, Embeddings, extract_embeddings
from app.engine.errors import EngineError, TrainingCancelled
from app.engine.export import load_artifact, predict, predict_with, save_artifact, torch_forward
from app.engine.models import default_image_size, is_known_backbone, list_backbones
from app.engine.onnx import ONNX_FILE, OnnxReport, export_onnx
from app.engine.specs import (
    DatasetSplits,
    EpochMetrics,
    Evaluation,
    Hyperparameters,
    ModelCard,
    ModelSource,
    TrainResult,
    check_batch_memory,
)
from app.engine.strategies import (
    list_strategies,
    strategy_defaults,
    strategy_option_names,
    strategy_summary,
)
from app.engine.train import check_job, run_training

__all__ = [
    "FEATURE_JOB",
    "FEATURE_JOB_OPTIONS",
    "ONNX_FILE",
    "Callback",
    "DatasetSplits",
    "Embeddings",
    "EngineError",
    "EpochMetrics",
    "Evaluation",
    "Hyperparameters",
    "ModelCard",
    "ModelSource",
    "OnnxReport",
    "TrainResult",
    "TrainingCancelled",
    "check_batch_memory",
    "check_job",
    "create_eval_transform",
    "default_image_size",
    "export_onnx",
    "extract_embeddings",
    "is_known_backbone",
    "list_backbones",
    "list_strategies",
    "load_artifact",
    "predict",
    "predict_with",
    "run_training",
    "save_artifact",
    "strategy_defaults",
    "strategy_option_names",
    "strategy_summary",
    "torch_forward",
]
