"""The API's Hyperparameters schema mirrors the engine's: same fields, defaults, choices, bounds.

The worker builds ``engine.Hyperparameters(**spec["hyperparameters"])`` from what the API
stored, so a field the API does not know cannot be set by users, and a value the API accepts but
the engine rejects fails the job after it was queued instead of answering 422.
"""

from __future__ import annotations

import dataclasses
import typing

import annotated_types
import pytest
from pydantic import ValidationError

from app import engine
from app.api.schemas.jobs import Hyperparameters as ApiHyperparameters
from app.engine import specs

ENGINE_FIELDS = {f.name: f for f in dataclasses.fields(engine.Hyperparameters)}
CHOICES = {
    "optimizer": specs.OPTIMIZERS,
    "early_stopping_metric": specs.EARLY_STOPPING_METRICS,
    "class_weighting": specs.CLASS_WEIGHTINGS,
    "sampler": specs.SAMPLERS,
    "augmentation": specs.AUGMENTATIONS,
    "scheduler": specs.SCHEDULERS,
}


def test_field_names_and_defaults_agree():
    api_fields = ApiHyperparameters.model_fields
    assert list(api_fields) == list(ENGINE_FIELDS)
    api_defaults = ApiHyperparameters.model_validate({}).model_dump()
    engine_defaults = dataclasses.asdict(engine.Hyperparameters())
    assert api_defaults == engine_defaults


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_choices_agree(name):
    annotation = ApiHyperparameters.model_fields[name].annotation
    assert typing.get_origin(annotation) is typing.Literal
    assert set(typing.get_args(annotation)) == set(CHOICES[name])


def _edges(name: str) -> list[tuple[float, bool]]:
    """(value, api_accepts) at each end of the API's bounds for a numeric field."""
    field = ApiHyperparameters.model_fields[name]
    eps = 1 if field.annotation in (int, int | None) else 1e-9
    out: list[tuple[float, bool]] = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            out += [(item.ge, True), (item.ge - eps, False)]
        elif isinstance(item, annotated_types.Gt):
            out += [(item.gt + eps, True), (item.gt, False)]
        elif isinstance(item, annotated_types.Le):
            out += [(item.le, True)]
        elif isinstance(item, annotated_types.Lt):
            out += [(item.lt - eps, True), (item.lt, False)]
    return out


NUMERIC = [
    name
    for name, field in ApiHyperparameters.model_fields.items()
    if name not in CHOICES and field.metadata
]


@pytest.mark.parametrize("name", NUMERIC)
def test_every_value_the_api_accepts_the_engine_accepts(name):
    # The API may be stricter than the engine (epochs <= 1000, image_size >= 16 are the
    # service's own caps), never looser: its edge values must pass the engine too.
    base = {"epochs": 1000} if name == "warmup_epochs" else {}
    for value, accepted in _edges(name):
        try:
            api = ApiHyperparameters.model_validate({**base, name: value})
        except ValidationError:
            assert not accepted, (name, value)
            continue
        assert accepted, (name, value)
        engine.Hyperparameters(**api.model_dump())


def test_warmup_must_be_shorter_than_the_job_in_both():
    with pytest.raises(ValidationError, match="warmup_epochs"):
        ApiHyperparameters.model_validate({"epochs": 3, "warmup_epochs": 3})
    with pytest.raises(engine.EngineError, match="warmup_epochs"):
        engine.Hyperparameters(epochs=3, warmup_epochs=3)
