"""The job's final evaluation on the validation split."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.engine.specs import Evaluation


def compute_evaluation(
    predictions: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]
) -> Evaluation:
    """Accuracy, per-class accuracy (recall) and the [true][pred] confusion matrix."""
    n = len(class_names)
    predictions = predictions.to("cpu", torch.int64)
    targets = targets.to("cpu", torch.int64)
    matrix = torch.bincount(targets * n + predictions, minlength=n * n).view(n, n)
    per_class_total = matrix.sum(dim=1)
    correct = matrix.diagonal()
    per_class = {
        name: float(correct[i]) / float(per_class_total[i])
        for i, name in enumerate(class_names)
        if per_class_total[i] > 0
    }
    total = int(targets.numel())
    return Evaluation(
        accuracy=float(correct.sum()) / total if total else 0.0,
        per_class_accuracy=per_class,
        confusion_matrix=matrix.tolist(),
        num_samples=total,
    )
