"""Run one job: claim it, train with the engine, store the model version, record the outcome."""

from __future__ import annotations

import logging
import platform
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

import app
from app.cpu import usable_cpus
from app.db.models import Dataset, Job, JobStatus, ModelVersion
from app.db.repositories import jobs as jobs_repo
from app.db.repositories import models as models_repo
from app.db.session import Database
from app.engine import (
    DatasetSplits,
    EngineError,
    ModelSource,
    TrainingCancelled,
    TrainResult,
    export_onnx,
    extract_embeddings,
    load_artifact,
    run_training,
    save_artifact,
)
from app.engine.loop import resolve_device
from app.engine.state import Checkpointer
from app.errors import ServiceError
from app.jobspec import EXTRA_DATASET_FIELDS, JobCreate
from app.naming import slugify
from app.observability import job_context
from app.services.job_kinds import kind_of
from app.settings import Settings
from app.storage.datasets import DatasetManifest, load_manifest
from worker import metrics
from worker.features import save_embeddings
from worker.progress import DatabaseProgress
from worker.recovery import WORKER_LOST, JobHeartbeat  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


# Stable codes stored in jobs.error_code, safe for clients to branch on (the message may change).
INVALID_SPEC = "invalid_spec"  # the engine refused the job's inputs (EngineError)
DATASET_MISSING = "dataset_missing"
DATASET_CORRUPT = "dataset_corrupt"
BASE_MODEL_MISSING = "base_model_missing"
INTERNAL_ERROR = "internal_error"  # a bug or an environment problem: see the worker's log


class JobInputError(Exception):
    """The job cannot start for a reason the user can fix (shown as the job's error)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def error_code(exc: BaseException) -> str:
    if isinstance(exc, JobInputError):
        return exc.code
    if isinstance(exc, EngineError):
        # An EngineError subclass may name its own code (pretrained_weights_unavailable).
        return str(getattr(exc, "code", None) or INVALID_SPEC)
    return INTERNAL_ERROR


def execute_job(job_id: uuid.UUID, settings: Settings, db: Database) -> str:
    with job_context(job_id):
        with db.session_scope() as session:
            attempt = jobs_repo.claim(session, job_id)
            if attempt is None:
                # Already running, finished or cancelled: a redelivery, or a cancel that won the
                # race.
                log.info("job %s not claimed (no longer queued); nothing to do", job_id)
                return "skipped"
        metrics.JOB_RUNNING.set(1)
        started = time.monotonic()
        try:
            with JobHeartbeat(db, job_id, attempt, every_s=settings.job_heartbeat_s):
                status, strategy = _run_claimed(job_id, attempt, settings, db)
        finally:
            # A worker shut down mid-job counts nothing: its job is still running in the
            # database, and the next worker fails it as worker_lost.
            metrics.JOB_RUNNING.set(0)
        labels = {"status": status.value, "strategy": strategy}
        metrics.JOBS_FINISHED.labels(**labels).inc()
        metrics.JOB_DURATION.labels(**labels).observe(time.monotonic() - started)
        return status.value


def _run_claimed(
    job_id: uuid.UUID, attempt: int, settings: Settings, db: Database
) -> tuple[JobStatus, str]:
    """Run a claimed job to its final status; returns (status, strategy)."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    strategy = "unknown"
    checkpoints = Checkpointer(settings.artifacts.path(settings.artifacts.checkpoint_key(job_id)))
    if attempt > 1:
        # The epochs after the last saved state are trained again and recorded anew.
        epoch, step = checkpoints.latest_position()
        with db.session_scope() as session:
            jobs_repo.delete_metrics_after(session, job_id, epoch)
        log.warning(
            "job %s: attempt %d resumes after epoch %d and %d steps of the next",
            job_id, attempt, epoch, step,
        )  # fmt: skip
    finish = partial(_finish, db, job_id, attempt=attempt)
    fail = partial(_fail, db, job_id, attempt=attempt)
    try:
        with db.session_scope() as session:
            job = _load(session, job_id)
            strategy = str(job.spec.get("strategy", "unknown"))
            spec = _parse_spec(job.spec)
            source, parent_id = _model_source(session, settings, spec)
            data, dataset = _dataset_splits(session, settings, job, spec)
        progress = DatabaseProgress(
            db, job_id, interval_s=settings.progress_interval_s, attempt=attempt
        )
        kind = kind_of(spec.strategy)
        if kind is None:
            raise JobInputError(f"unknown strategy {spec.strategy!r}", code=INVALID_SPEC)
        run = RUNNERS[kind.name]
        run(JobRun(settings, db, job_id, spec, source, parent_id, data, dataset, progress,
                   checkpoints.folder))  # fmt: skip
        return finish(JobStatus.succeeded), strategy
    except TrainingCancelled:
        return finish(JobStatus.cancelled), strategy
    except (EngineError, JobInputError) as exc:
        return fail(str(exc), error_code(exc)), strategy
    except Exception as exc:
        message = f"internal error ({type(exc).__name__}: {exc})"[:2000]
        return fail(message, INTERNAL_ERROR, exc_info=True), strategy
    finally:
        # Any outcome ends the job (a lost worker never gets here): its state is not needed.
        checkpoints.clear()


def loader_workers(settings: Settings) -> int:
    """TRANSFERLAB_LOADER_WORKERS, or by device: on a GPU the model waits for decoded images
    (an H200 trained resnet18 at 112 px at 2,842 images/s with 4 workers and 5,042 with 12, its
    step alone does 13,821), so every core but one that the worker may use (affinity, a
    container's CPU quota) decodes; on CPU the cores also train: 2, the
    setting bench/speed.py and bench/cpu_settings.py measured."""
    if settings.loader_workers is not None:
        return settings.loader_workers
    if resolve_device(settings.device).type == "cuda":
        return max(2, usable_cpus() - 1)
    return 2


@dataclass(frozen=True)
class JobRun:
    """What a kind's runner gets: the claimed job, its parsed inputs, its progress callback."""

    settings: Settings
    db: Database
    job_id: uuid.UUID
    spec: JobCreate
    source: ModelSource
    parent_id: uuid.UUID | None
    data: DatasetSplits
    dataset: Dataset
    progress: DatabaseProgress
    checkpoint_dir: Path


def _train(run: JobRun) -> None:
    result = run_training(
        source=run.source,
        strategy=run.spec.strategy,
        data=run.data,
        hparams=run.spec.hyperparameters,
        strategy_options=run.spec.options,
        callbacks=[run.progress],
        device=run.settings.device,
        num_workers=loader_workers(run.settings),
        checkpoint_dir=run.checkpoint_dir,
        checkpoint_interval_s=run.settings.checkpoint_interval_s,
    )
    _register_model(run.db, run.settings, run.job_id, run.spec, run.dataset, run.parent_id, result)


def _extract(run: JobRun) -> None:
    settings, spec, hp = run.settings, run.spec, run.spec.hyperparameters
    emb = extract_embeddings(
        source=run.source,
        data=run.data,
        features=spec.options.get("features", "pre_logits"),
        image_size=hp.image_size,
        batch_size=hp.batch_size,
        callbacks=[run.progress],
        device=settings.device,
        num_workers=loader_workers(settings),
        amp=hp.amp,
        seed=hp.seed,
    )
    meta = {"job_id": str(run.job_id), **_lineage(spec, run.dataset, None, settings)}
    save_embeddings(
        emb,
        settings.layout.dataset_dir(run.dataset.id),
        settings.layout.features_dir(run.job_id),
        meta,
    )
    with run.db.session_scope() as session:
        jobs_repo.set_progress(
            session,
            run.job_id,
            latest_metrics={
                "num_images": int(emb.features.shape[0]),
                "dim": int(emb.features.shape[1]),
            },
        )


# How each kind of job runs, by app.services.job_kinds' names (a test checks they agree).
RUNNERS: dict[str, Callable[[JobRun], None]] = {"train": _train, "extract_features": _extract}


def _finish(
    db: Database, job_id: uuid.UUID, status: JobStatus, *, attempt: int | None = None
) -> JobStatus:
    with db.session_scope() as session:
        jobs_repo.finish(session, job_id, status, attempt=attempt)
    log.info("job %s %s", job_id, status.value)
    return status


def _fail(
    db: Database,
    job_id: uuid.UUID,
    error: str,
    code: str,
    *,
    exc_info: bool = False,
    attempt: int | None = None,
) -> JobStatus:
    with db.session_scope() as session:
        jobs_repo.finish(
            session, job_id, JobStatus.failed, error=error, error_code=code, attempt=attempt
        )
    metrics.JOB_FAILURES.labels(error_code=code).inc()
    # The code goes beside the message as its own field (JSON logs) or tag (text logs), so
    # alerts can group failures without parsing messages. Tracebacks only for internal errors.
    log.error(
        "job %s failed (%s): %s", job_id, code, error, exc_info=exc_info, extra={"error_code": code}
    )
    return JobStatus.failed


def _load(session: Any, job_id: uuid.UUID) -> Job:
    job = jobs_repo.get(session, job_id)
    if job is None:  # pragma: no cover - claim() just saw it
        raise JobInputError(f"job {job_id} vanished", code=INTERNAL_ERROR)
    return job


def _parse_spec(stored: dict[str, Any]) -> JobCreate:
    """The stored spec as the typed object the API validated it into (one definition)."""
    try:
        return JobCreate.model_validate(stored)
    except ValidationError as exc:  # a spec stored before a rule changed
        raise JobInputError(
            f"the job's spec is no longer valid ({exc.error_count()} problem(s): "
            f"{exc.errors()[0]['msg']}); submit it again",
            code=INVALID_SPEC,
        ) from None


def _model_source(
    session: Any, settings: Settings, spec: JobCreate
) -> tuple[ModelSource, uuid.UUID | None]:
    ref = spec.source
    if ref.kind == "timm":
        return ModelSource(kind="timm", name=ref.name, pretrained=spec.pretrained), None
    parent = models_repo.get(session, ref.model_id) if ref.model_id else None
    if parent is None:
        raise JobInputError(
            f"base model {spec.base_model} no longer exists", code=BASE_MODEL_MISSING
        )
    folder = settings.artifacts.path(parent.artifact_key)
    return ModelSource(kind="artifact", artifact_dir=folder), parent.id


def _dataset_splits(
    session: Any, settings: Settings, job: Job, spec: JobCreate | None = None
) -> tuple[DatasetSplits, Dataset]:
    """The engine's inputs from the job's datasets: the source's train/val; the target's images
    (every split, labels unused); the labelled target's and the eval set's (path, label) over
    every split, their labels mapped by class name onto the source's classes. ``spec``: the
    job's, parsed (from ``job.spec`` when not given)."""
    spec = spec or _parse_spec(job.spec)
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    if dataset is None:
        raise JobInputError("the job's dataset no longer exists", code=DATASET_MISSING)
    folder, manifest = _manifest(settings, dataset, "dataset")
    index = {name: i for i, name in enumerate(manifest.classes)}

    def resolve(root: Path, items: list[tuple[str, str]], role: str) -> tuple[tuple[str, int], ...]:
        unknown = sorted({cls for _, cls in items} - set(index))
        if unknown:  # checked when the job was submitted; only a damaged manifest gets here
            raise JobInputError(
                f"the job's {role} has classes the source dataset has not got: "
                f"{', '.join(map(repr, unknown))}",
                code=INVALID_SPEC,
            )
        return tuple((str(root / rel), index[cls]) for rel, cls in items)

    target: tuple[str, ...] = ()
    target_labeled: tuple[tuple[str, int], ...] = ()
    evaluation: tuple[tuple[str, int], ...] = ()
    if spec.target_dataset_id is not None:
        root, other = _other(session, settings, spec.target_dataset_id, "target dataset")
        target = tuple(str(root / rel) for rel in other.all_paths())
    if spec.labeled_target_dataset_id is not None:
        role = "labelled target dataset"
        root, other = _other(session, settings, spec.labeled_target_dataset_id, role)
        # The engine adds these to the domain loss's target pool itself (dann.target_pool).
        target_labeled = resolve(root, other.train + other.val, role)
    if spec.eval_dataset_id is not None:
        role = "eval dataset"
        root, other = _other(session, settings, spec.eval_dataset_id, role)
        evaluation = resolve(root, other.train + other.val, role)
    splits = DatasetSplits(
        class_names=tuple(manifest.classes),
        train=resolve(folder, manifest.train, "dataset"),
        val=resolve(folder, manifest.val, "dataset"),
        target=target,
        target_labeled=target_labeled,
        evaluation=evaluation,
    )
    return splits, dataset


def _other(
    session: Any, settings: Settings, dataset_id: uuid.UUID, role: str
) -> tuple[Path, DatasetManifest]:
    """The folder and manifest of one of the job's other datasets (target, eval, ...)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise JobInputError(f"the job's {role} no longer exists", code=DATASET_MISSING)
    return _manifest(settings, dataset, role)


def _manifest(settings: Settings, dataset: Dataset, role: str) -> tuple[Path, DatasetManifest]:
    folder = settings.layout.dataset_dir(dataset.id)
    try:
        return folder, load_manifest(folder)
    except ServiceError as exc:  # DatasetCorrupt: the files were lost or damaged on disk
        code = DATASET_CORRUPT if folder.is_dir() else DATASET_MISSING
        raise JobInputError(f"the job's {role} cannot be read: {exc.message}", code=code) from exc


def _lineage(
    spec: JobCreate, dataset: Dataset, parent_id: uuid.UUID | None, settings: Settings
) -> dict:
    return {
        "base_model": spec.base_model,
        "pretrained": spec.pretrained,
        "parent_model_id": str(parent_id) if parent_id else None,
        "dataset_id": str(dataset.id),
        "dataset_name": dataset.name,
        "dataset_sha256": dataset.sha256,
        # Domain adaptation's other datasets (None when the job had none).
        **{
            field: str(value) if (value := getattr(spec, field)) is not None else None
            for field in EXTRA_DATASET_FIELDS
        },
        "job_spec": spec.model_dump(mode="json"),
        "device": settings.device,
        "torch_threads": torch.get_num_threads(),
        "libraries": {
            "transferlab": app.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
        },
    }


def _register_model(
    db: Database,
    settings: Settings,
    job_id: uuid.UUID,
    spec: JobCreate,
    dataset: Dataset,
    parent_id: uuid.UUID | None,
    result: TrainResult,
) -> None:
    model_id = uuid.uuid4()
    settings.layout.ensure()
    key = settings.artifacts.model_key(model_id)
    final_dir = settings.artifacts.path(key)
    partial = final_dir.with_name(final_dir.name + ".partial")
    save_artifact(result.model, result.card, partial)
    onnx = _export_onnx(partial)
    partial.rename(final_dir)  # a model folder is complete or absent
    evaluation = result.evaluation
    metrics = {
        "val_accuracy": evaluation.accuracy,
        "per_class_accuracy": evaluation.per_class_accuracy,
        "confusion_matrix": evaluation.confusion_matrix,
        "num_val_images": evaluation.num_samples,
        "train_seconds": result.train_seconds,
        "epochs": len(result.history),
        # What the engine chose where the spec left it open (augmentation "auto", keep_best).
        **result.choices,
        # Validation images with a copy in train (from the dataset report): val_accuracy is
        # optimistic by up to this fraction.
        "val_leak_fraction": float(
            ((dataset.report or {}).get("leakage") or {}).get("fraction") or 0
        ),
        "onnx": onnx,
    }
    if result.eval_dataset is not None:
        # The job's eval dataset (eval_dataset_id), scored with the final model.
        metrics["eval"] = {
            "accuracy": result.eval_dataset.accuracy,
            "per_class_accuracy": result.eval_dataset.per_class_accuracy,
            "confusion_matrix": result.eval_dataset.confusion_matrix,
            "num_images": result.eval_dataset.num_samples,
        }
    name = spec.name or slugify(dataset.name)
    try:
        # Two jobs finishing at once under one name race for the next version number; the
        # unique (name, version) constraint makes the loser retry with the next one.
        for _ in range(5):
            try:
                with db.session_scope() as session:
                    models_repo.add(
                        session,
                        ModelVersion(
                            id=model_id,
                            name=name,
                            version=models_repo.next_version(session, name),
                            job_id=job_id,
                            dataset_id=dataset.id,
                            parent_id=parent_id,
                            base_model=spec.base_model,
                            strategy=spec.strategy,
                            class_names=list(result.card.class_names),
                            metrics=metrics,
                            lineage=_lineage(spec, dataset, parent_id, settings),
                            artifact_key=key,
                        ),
                    )
                    jobs_repo.set_progress(
                        session, job_id, latest_metrics={**_latest(result), **metrics}
                    )
                return
            except IntegrityError:
                with db.session_scope() as session:
                    if models_repo.get_by_job(session, job_id) is not None:
                        raise  # a version for this job exists: never create a second one
        raise RuntimeError("could not allocate a model version number after 5 tries")
    except BaseException:
        shutil.rmtree(final_dir, ignore_errors=True)
        raise


def _export_onnx(folder: Path) -> dict[str, Any]:
    """Export the saved model to ONNX beside its weights, checked against it (the eager model as
    the API loads it, on CPU). Part of making a version rather than a job of its own: the model
    is at hand, every version gets an export, and it costs seconds (5-7 s for resnet18 and
    resnet10t on 2 shared cores, bench/onnx_vs_torch.py) against a training run's minutes. A failed
    export leaves the version without ONNX (served by torch, the reason in metrics.onnx.error),
    never fails the training job."""
    try:
        model, card = load_artifact(folder, device="cpu")
        return export_onnx(model, card, folder).to_dict()
    except Exception as exc:
        log.warning("ONNX export of %s failed: %s", folder.name, exc, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _latest(result: TrainResult) -> dict:
    return asdict(result.history[-1]) if result.history else {}
