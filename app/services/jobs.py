from __future__ import annotations

import difflib
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import engine
from app.db.base import utcnow
from app.db.models import Dataset, Job, JobStatus
from app.db.repositories import jobs as repo
from app.db.repositories import models as models_repo
from app.errors import Conflict, InvalidInput, NotFound, ServiceError
from app.jobspec import EXTRA_DATASET_FIELDS, parse_base_model
from app.naming import slugify
from app.services.datasets import DatasetNotFound, get_dataset, job_warnings
from app.services.job_kinds import kind_of, list_job_kinds
from app.storage.datasets import UNLABELED

if TYPE_CHECKING:
    from app.queue import JobQueue

log = logging.getLogger(__name__)


class JobNotFound(NotFound):
    code = "job_not_found"


class JobFinished(Conflict):
    code = "job_finished"


class NoFeatures(Conflict):
    code = "no_features"


class BrokerUnavailable(ServiceError):
    status_code = 503
    code = "broker_unavailable"


def get_job(session: Session, job_id: uuid.UUID) -> Job:
    job = repo.get(session, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} does not exist")
    return job


def job_kinds() -> list[str]:
    """Every `strategy` a job may name: the training strategies, and extract_features."""
    return [name for kind in list_job_kinds() for name in kind.strategies()]


def option_names(strategy: str) -> list[str]:
    kind = kind_of(strategy)
    return kind.options(strategy) if kind else []


def validate_strategy(name: str, options: dict[str, Any]) -> None:
    choices = job_kinds()
    if name not in choices:
        raise InvalidInput(
            f"unknown strategy {name!r}; choose one of: {', '.join(choices)}",
            code="unknown_strategy",
            details={"field": "strategy", "choices": choices},
        )
    allowed = option_names(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"strategy {name!r} has no option(s) {', '.join(unknown)}; its options are: "
            f"{', '.join(allowed) or '(none)'}",
            code="unknown_option",
            details={"field": "options", "choices": allowed},
        )


def validate_base_model(session: Session, base_model: str) -> uuid.UUID | None:
    """Check ``timm:<name>`` or ``model:<version id>``; return the parent model id if any."""
    ref = parse_base_model(base_model)
    if ref.kind == "timm":
        name = ref.name
        if not engine.is_known_backbone(name):
            choices = engine.list_backbones()
            close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise InvalidInput(
                f"unknown timm backbone {name!r}.{hint} GET /v1/backbones lists all "
                f"{len(choices)} names.",
                code="unknown_backbone",
                details={"field": "base_model", "close_matches": close, "choices": choices},
            )
        return None
    kind, _, name = base_model.partition(":")
    if kind == "model" and name:
        if ref.model_id is None or models_repo.get(session, ref.model_id) is None:
            raise InvalidInput(
                f"base_model {base_model!r}: no model version with id {name!r}; "
                "GET /v1/models lists them",
                code="base_model_not_found",
                details={"field": "base_model"},
            )
        return ref.model_id
    raise InvalidInput(
        f"base_model {base_model!r} must be 'timm:<model name>' (e.g. 'timm:resnet18') or "
        "'model:<model version id>'",
        code="invalid_base_model",
        details={"field": "base_model"},
    )


def check_spec(spec: dict[str, Any]) -> engine.Hyperparameters:
    """Option values and their fit with the hyperparameters, as the engine will see them;
    returns the engine's hyperparameters."""
    hp = spec["hyperparameters"]
    try:
        hparams = engine.Hyperparameters.model_validate(hp)
    except ValidationError as exc:  # the API parsed them already; a caller in Python may not have
        raise InvalidInput(
            str(exc), code="invalid_option", details={"field": "hyperparameters"}
        ) from None
    ref = parse_base_model(spec["base_model"])
    if hp.get("image_size") is None and ref.kind == "timm":
        # The backbone's own input size applies: bound the batch by it too.
        size = engine.default_image_size(ref.name)
        problems = engine.check_batch_memory(hparams.batch_size, size) if size else []
        if problems:
            raise InvalidInput(
                problems[0] + " (image_size defaults to the backbone's)",
                code="invalid_option",
                details={"field": "hyperparameters.batch_size"},
            )
    kind = kind_of(spec["strategy"])
    assert kind is not None  # validate_strategy ran
    try:
        kind.check(spec["strategy"], spec.get("options") or {}, hparams)
    except engine.EngineError as exc:
        raise InvalidInput(str(exc), code="invalid_option", details={"field": "options"}) from None
    return hparams


def strategies_using_target() -> list[str]:
    """The strategies that train with target-domain images (engine ``Strategy.needs_target``)."""
    return engine.list_strategies(needs_target=True)


def strategies_using_labeled_target() -> list[str]:
    """The strategies that put labelled target images (labeled_target_dataset_id) into their
    loss (engine ``Strategy.uses_target_labeled``)."""
    return engine.list_strategies(uses_target_labeled=True)


def _dataset_in(session: Session, spec: dict[str, Any], field: str) -> Dataset | None:
    value = spec.get(field)
    if value is None:
        return None
    dataset_id = uuid.UUID(str(value))
    try:
        return get_dataset(session, dataset_id)
    except DatasetNotFound as exc:
        raise DatasetNotFound(
            f"{field}: dataset {dataset_id} does not exist; GET /v1/datasets lists them",
            details={"field": field},
        ) from exc


def _class_names(dataset: Dataset) -> list[str]:
    return [str(c) for c in (dataset.report or {}).get("classes") or []]


def _require_labelled(dataset: Dataset, field: str, why: str) -> None:
    if dataset.kind == UNLABELED:
        raise InvalidInput(
            f"{field}: dataset {dataset.id} ({dataset.name!r}) is unlabeled; {why}. Upload it "
            "with class folders (kind=labelled), or name a labelled dataset",
            code="dataset_unlabeled",
            details={"field": field, "dataset_id": str(dataset.id)},
        )


def _require_known_classes(dataset: Dataset, field: str, source: Dataset) -> None:
    """An eval or labelled-target dataset's labels are mapped by class name onto the source's:
    a class the source has not got could never be predicted."""
    known = set(_class_names(source))
    extra = sorted(set(_class_names(dataset)) - known)
    if extra:
        raise InvalidInput(
            f"{field}: dataset {dataset.id} has class(es) {', '.join(map(repr, extra))} that the "
            f"source dataset {source.id} has not got (it has {', '.join(map(repr, sorted(known)))}"
            "); the model can only predict the source's classes, so remove those classes' "
            "folders or rename them to the source's names",
            code="class_mismatch",
            details={"field": field, "extra_classes": extra, "source_classes": sorted(known)},
        )


def check_job_datasets(
    session: Session, spec: dict[str, Any], source: Dataset
) -> dict[str, Dataset | None]:
    """The target, labelled-target and eval datasets of a job spec, checked against its
    strategy and source dataset (``validate_strategy`` has run); by field name."""
    strategy = spec["strategy"]
    found = {field: _dataset_in(session, spec, field) for field in EXTRA_DATASET_FIELDS}
    target, labeled, evaluation = (found[f] for f in EXTRA_DATASET_FIELDS)
    adapting = strategies_using_target()
    kind = kind_of(strategy)
    if strategy in adapting and target is None:
        raise InvalidInput(
            f"strategy {strategy!r} adapts to a target domain and needs its images: set "
            "target_dataset_id to a dataset of them (upload one with kind=unlabeled)",
            code="target_dataset_required",
            details={"field": "target_dataset_id"},
        )
    if strategy not in adapting and target is not None:
        raise InvalidInput(
            f"strategy {strategy!r} does not use a target dataset; remove target_dataset_id, or "
            f"choose a strategy that adapts to one: {', '.join(adapting)}",
            code="target_dataset_not_used",
            details={"field": "target_dataset_id", "choices": adapting},
        )
    if labeled is not None:
        takers = strategies_using_labeled_target()
        if strategy not in takers:
            raise InvalidInput(
                f"labeled_target_dataset_id is only used by {', '.join(takers)}, not by "
                f"{strategy!r}; remove it or change the strategy",
                code="labeled_target_not_supported",
                details={"field": "labeled_target_dataset_id", "choices": takers},
            )
        _require_labelled(labeled, "labeled_target_dataset_id", "its labels enter the loss")
        _require_known_classes(labeled, "labeled_target_dataset_id", source)
    if evaluation is not None:
        if kind is None or not kind.makes_model:
            raise InvalidInput(
                f"a {strategy!r} job trains no model, so there is nothing to score on an eval "
                "dataset; remove eval_dataset_id",
                code="eval_dataset_not_used",
                details={"field": "eval_dataset_id"},
            )
        _require_labelled(evaluation, "eval_dataset_id", "scoring needs labels")
        _require_known_classes(evaluation, "eval_dataset_id", source)
    return found


def create_job(session: Session, spec: dict[str, Any]) -> Job:
    """Validate the spec against what exists and insert the job as ``queued`` (flush only)."""
    dataset = _dataset_in(session, spec, "dataset_id")
    assert dataset is not None  # the API requires dataset_id
    _require_labelled(dataset, "dataset_id", "a job learns the classes of its dataset_id")
    validate_strategy(spec["strategy"], spec.get("options") or {})
    others = check_job_datasets(session, spec, dataset)
    validate_base_model(session, spec["base_model"])
    hparams = check_spec(spec)
    # The model name is fixed now, a slug: datasets uploaded before names were validated may
    # have names that are not.
    spec = {**spec, "name": spec.get("name") or slugify(dataset.name)}
    kind = kind_of(spec["strategy"])
    assert kind is not None
    job = Job(
        status=JobStatus.queued.value,
        strategy=spec["strategy"],
        base_model=spec["base_model"],
        dataset_id=dataset.id,
        **{field: d.id if d else None for field, d in others.items()},
        spec=spec,
        total_epochs=kind.total_epochs(hparams),
        warnings=job_warnings(dataset) + eval_overlap_warnings(spec),
    )
    try:
        return repo.add(session, job)
    except IntegrityError:
        # A dataset was deleted between the checks above and the insert (a delete holds its
        # row until it commits: repositories.datasets.lock_for_delete): name it.
        session.rollback()
        for field in ("dataset_id", *others):
            _dataset_in(session, spec, field)
        raise


def eval_overlap_warnings(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """An eval set the job also trains on with its labels scores images the model has learned:
    its eval_accuracy is optimistic (as val_leakage says of a val split)."""
    eval_id = spec.get("eval_dataset_id")
    roles = [
        f for f in ("dataset_id", "labeled_target_dataset_id") if eval_id and spec.get(f) == eval_id
    ]
    if not roles:
        return []
    return [
        {
            "code": "eval_in_training",
            "message": f"eval_dataset_id is also the job's {' and '.join(roles)}: the model "
            "trains on its labelled images, so eval_accuracy is optimistic; use a held-out set",
            "roles": roles,
        }
    ]


def cancel_job(session: Session, job_id: uuid.UUID) -> Job:
    job = get_job(session, job_id)
    if repo.cancel_queued(session, job_id) or repo.request_cancel(session, job_id):
        session.refresh(job)
        return job
    session.refresh(job)
    raise JobFinished(
        f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled",
        details={"status": job.status},
    )


def features_bundle(job: Job, features_dir: Path) -> Path:
    """The zip of a succeeded feature-extraction job's embeddings."""
    if job.strategy != engine.FEATURE_JOB:
        raise NoFeatures(
            f"job {job.id} is a {job.strategy!r} job; only {engine.FEATURE_JOB!r} jobs store "
            "features (its model is at GET /v1/models/<model_id>/download)"
        )
    bundle = features_dir / "features.zip"
    if job.status != JobStatus.succeeded.value or not bundle.exists():
        raise NoFeatures(
            f"job {job.id} is {job.status}; its features can be downloaded once it succeeded",
            details={"status": job.status},
        )
    return bundle


def commit_and_enqueue(
    session: Session, queue: JobQueue, job: Job, *, on_failure: Callable[[], None]
) -> None:
    """Commit the new job, then hand its id to the broker.

    The one service that commits, because the order is the point: a worker that picks the id up
    at once must find the row. When the broker cannot be reached the job is marked failed (the
    row is already committed), ``on_failure`` runs (the caller forgets its Idempotency-Key, so a
    retry submits anew), that is committed too, and ``BrokerUnavailable`` says what to do.
    """
    session.commit()
    try:
        queue.enqueue_job(job.id)
    except Exception as exc:
        log.exception("enqueue failed for job %s", job.id)
        job.status = JobStatus.failed.value
        job.error = f"could not reach the job broker ({type(exc).__name__}); submit the job again"
        job.error_code = "broker_unavailable"
        job.finished_at = utcnow()
        on_failure()
        session.commit()
        raise BrokerUnavailable(
            "the job was stored but the broker could not be reached, so it was marked failed; "
            "check TRANSFERLAB_BROKER_URL and GET /readyz, then submit again",
            details={"job_id": str(job.id)},
        ) from exc
