"""Fine-tuning on real digit images with a tiny timm ResNet."""

from __future__ import annotations

import math

import pytest
import torch

from app.engine import EngineError, Hyperparameters, run_training
from app.engine.loop import seed_everything
from app.engine.models import create_timm_model, freeze_stages
from tests.engine._helpers import changed_keys, scratch, state_copy


def test_finetune_learns_digits_above_chance(finetuned):
    history = finetuned.history
    assert [m.epoch for m in history] == [1, 2, 3, 4, 5, 6]
    assert {m.phase for m in history} == {"train"}
    assert history[-1].train_loss < history[0].train_loss
    # Chance is 0.10; this run reaches ~0.65. The margin absorbs thread-count float noise.
    assert history[-1].val_accuracy > 0.35
    for m in history:
        assert math.isfinite(m.val_loss) and m.learning_rate == pytest.approx(3e-3)
        assert m.images_per_second > 0 and m.seconds > 0


def test_finetune_result_is_cpu_eval_model_with_matching_evaluation(finetuned):
    model = finetuned.model
    assert not model.training and all(not m.training for m in model.modules())
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    # Trained in channels_last, returned in the usual layout (safetensors and loaders need it).
    assert all(t.is_contiguous() for t in model.state_dict().values())
    assert finetuned.card.architecture == {
        "library": "timm",
        "name": "test_resnet",
        "num_classes": 10,
    }
    assert finetuned.card.preprocessing["input_size"] == [3, 32, 32]
    evaluation = finetuned.evaluation
    # Stratified 20% of 60 images per class.
    assert evaluation.num_samples == 120
    assert sum(map(sum, evaluation.confusion_matrix)) == 120
    # keep_best (the default): the model and its evaluation are those of the kept epoch, the
    # best by val_loss (early_stopping_metric's default).
    kept = finetuned.choices["kept_epoch"]
    assert kept == min(finetuned.history, key=lambda m: m.val_loss).epoch
    assert evaluation.accuracy == pytest.approx(finetuned.history[kept - 1].val_accuracy)
    assert finetuned.choices["augmentation"] == "light"  # 32 px digits: auto picks light
    assert set(evaluation.per_class_accuracy) == set(finetuned.card.class_names)
    diagonal = sum(evaluation.confusion_matrix[i][i] for i in range(10))
    assert evaluation.accuracy == pytest.approx(diagonal / 120)
    assert finetuned.train_seconds > 0


def test_freeze_stages_keeps_frozen_params_and_bn_stats_bitwise(small_digits):
    hparams = Hyperparameters(epochs=1, batch_size=32, learning_rate=3e-3, image_size=32)
    # run_training seeds before building the model, so this is its exact starting point.
    seed_everything(hparams.seed)
    reference = create_timm_model("test_resnet", 10, pretrained=False)
    # Which keys belong to the stem + first 2 stages (act1, layer1) of test_resnet?
    frozen_modules = freeze_stages(reference, 2)
    frozen_ids = {id(p) for m in frozen_modules for p in m.parameters()}
    frozen_ids |= {id(b) for m in frozen_modules for b in m.buffers()}
    tensors = {**dict(reference.named_parameters()), **dict(reference.named_buffers())}
    frozen_keys = {k for k, t in tensors.items() if id(t) in frozen_ids}
    assert frozen_keys and all(k.startswith(("conv1.", "bn1.", "layer1.")) for k in frozen_keys)
    assert any(k.endswith("running_mean") for k in frozen_keys)

    before = state_copy(reference)
    result = run_training(
        source=scratch(),
        strategy="finetune",
        data=small_digits,
        hparams=hparams,
        strategy_options={"freeze_stages": 2},
        device="cpu",
    )
    changed = changed_keys(before, state_copy(result.model))
    assert not changed & frozen_keys
    assert any(k.startswith("layer2.") for k in changed)
    assert "fc.weight" in changed
    assert all(p.requires_grad for p in result.model.parameters())


def test_freeze_stages_too_many_names_the_stages(small_digits):
    with pytest.raises(EngineError, match=r"freeze_stages=6 but the model has 5 stages") as err:
        run_training(
            source=scratch(),
            strategy="finetune",
            data=small_digits,
            hparams=Hyperparameters(epochs=1, image_size=32),
            strategy_options={"freeze_stages": 6},
            device="cpu",
        )
    assert "layer4" in str(err.value) and "0 to 5" in str(err.value)


def test_freeze_stages_on_vit_freezes_embeddings_and_first_blocks_only():
    import timm

    model = timm.create_model("test_vit", pretrained=False, num_classes=3)
    frozen = freeze_stages(model, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.mlp.fc2.bias"):
        assert name not in trainable
    assert "blocks.2.attn.qkv.weight" in trainable and "head.weight" in trainable
    # The `blocks` container holds trainable blocks too: it must not be among the eval-mode set.
    assert model.blocks not in frozen and model.blocks[0] in frozen


@pytest.mark.parametrize("strategy", ["finetune", "linear_probe"])
def test_same_seed_gives_identical_history_and_other_seed_differs(small_digits, strategy):
    def history(seed: int):
        result = run_training(
            source=scratch(),
            strategy=strategy,
            data=small_digits,
            hparams=Hyperparameters(epochs=2, batch_size=32, image_size=32, seed=seed),
            device="cpu",
        )
        return [(m.train_loss, m.val_loss, m.val_accuracy, m.learning_rate) for m in result.history]

    first = history(7)
    assert history(7) == first
    assert history(8) != first


def test_sgd_with_weight_decay_trains(small_digits):
    result = run_training(
        source=scratch("test_efficientnet"),
        strategy="finetune",
        data=small_digits,
        hparams=Hyperparameters(
            epochs=1, batch_size=16, optimizer="sgd", weight_decay=1e-4, image_size=32
        ),
        device="cpu",
    )
    assert math.isfinite(result.history[0].train_loss)
    assert isinstance(result.model, torch.nn.Module)
