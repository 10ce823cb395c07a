"""create_app(): routers, error handlers, middleware, shared state."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api import catalog, datasets, health, jobs, keys, models, registry, uploads
from app.api.auth import ApiKeyAuth, KeyCache, check_route_scopes, require_scope
from app.api.errors import install_error_handlers
from app.api.limits import BodyRule, BodySizeLimit, HostAllowList
from app.api.openapi import check_operation_ids, install_openapi, operation_id
from app.api.schemas.common import error_responses
from app.db.repositories import datasets as datasets_repo
from app.db.session import Database
from app.observability import install_observability
from app.queue import JobQueue
from app.services import idempotency
from app.services import keys as key_service
from app.services import uploads as upload_service
from app.serving.cache import ModelCache
from app.serving.resolver import ModelResolver
from app.settings import Settings, get_settings
from app.storage.sweep import sweep_leftovers
from app.ui import install_ui

log = logging.getLogger(__name__)

DESCRIPTION = """
Upload an image dataset, fine-tune a pretrained backbone on it, get a versioned model, predict.

**Authentication.** Every `/v1` endpoint needs an API key with the right scope, sent as
`Authorization: Bearer tl_...` (`read`: every GET; `train`: upload and delete datasets, submit
and cancel jobs, move aliases, tag, archive and delete model versions; `predict`: prediction;
`admin`: everything, and keys). Create keys with
`transferlab keys create --scopes read,train --name ci`. `/healthz` and `/readyz` are open.

Every error has the same shape: `{"error": {"code": "...", "message": "...", "details": {}}}`;
`code` is stable and safe to branch on.
"""

# Multipart framing around the images of one prediction request (boundaries, part headers).
PREDICT_OVERHEAD_BYTES = 1 << 20


class StartupRefused(RuntimeError):
    """The service must not start as configured; the message says what to change."""


OPENAPI_TAGS = [
    {"name": "datasets", "description": "Image datasets: upload, list, inspect, delete."},
    {"name": "uploads", "description": "Resumable uploads of large dataset archives, in parts."},
    {"name": "jobs", "description": "Training jobs: submit, watch their events, cancel."},
    {"name": "models", "description": "Model versions: card, download, predict, embed."},
    {"name": "registry", "description": "Aliases, tags, archive and delete of model versions."},
    {"name": "catalog", "description": "The transfer strategies and backbones offered."},
    {"name": "keys", "description": "API keys (admin scope)."},
    {"name": "operations", "description": "Health, readiness and metrics."},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.layout.ensure()
    db = Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        check_keys_exist(settings, db)
        await anyio.to_thread.run_sync(clean_up_after_crashes, settings, db)
        yield
        app.state.model_cache.close()  # answers queued predictions, stops inference threads
        db.dispose()

    app = FastAPI(
        title="TransferLab",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_observability
        redoc_url=None,
        # operationIds are the route functions' names (create_job, not create_job_v1_jobs_post):
        # generated clients get readable method names.
        generate_unique_id_function=operation_id,
        openapi_tags=OPENAPI_TAGS,
    )
    app.state.settings = settings
    app.state.artifacts = settings.artifacts  # resolved once (a path resolve costs ~40 us)
    app.state.db = db
    app.state.queue = JobQueue(settings)
    app.state.model_cache = ModelCache(
        settings.model_cache_size,
        backend=settings.serving_backend,
        max_batch=settings.predict_max_batch,
        max_queued=settings.predict_max_queued,
        decode_budget_pixels=settings.decode_budget_pixels,
        channels_last=settings.predict_channels_last,
        lanes=settings.predict_lanes,
        lane_processes=settings.predict_lane_processes,
        max_image_pixels=settings.max_image_pixels,
    )
    app.state.model_resolver = ModelResolver(settings.registry_cache_s)
    app.state.key_cache = KeyCache(settings.api_key_cache_s)
    install_error_handlers(app)
    # The prediction routes first: FastAPI tries the routes in order, and the ones before a
    # match cost every prediction (about 20 us with datasets, uploads and jobs ahead of them).
    # The docs keep the workflow's order (OPENAPI_TAGS).
    for module in (models, registry, datasets, uploads, jobs, catalog, keys, health):
        app.include_router(module.router)
    install_observability(
        app, settings, dependencies=[require_scope("read")], responses=error_responses()
    )
    check_route_scopes(app)  # fails now if a /v1 route declares no scope
    check_operation_ids(app)  # ... or if two routes would share an operationId
    install_openapi(app)
    install_ui(app)  # static pages at /ui; the /v1 calls they make carry the user's key

    # Starlette runs the middleware added last first. Outermost to innermost: observability
    # (installed above), host check, CORS (preflights carry no key), the API key check (before
    # any body is read), then body size limits.
    app.add_middleware(BodySizeLimit, **body_rules(settings))
    app.add_middleware(ApiKeyAuth, fastapi_app=app, db=db, cache=app.state.key_cache)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
        )
    if settings.allowed_host_list:
        app.add_middleware(HostAllowList, allowed=settings.allowed_host_list)
    return app


def body_rules(settings: Settings) -> dict:
    return {
        "rules": [
            BodyRule(
                re.compile(r"/v1/datasets"),
                settings.max_upload_bytes,
                "upload_too_large",
                "split the dataset or raise TRANSFERLAB_MAX_UPLOAD_BYTES",
            ),
            BodyRule(
                re.compile(r"/v1/uploads/[^/]+/parts/[^/]+"),
                upload_service.MAX_PART_BYTES,
                "part_too_large",
                f"a part holds at most {upload_service.MAX_PART_BYTES} bytes (its part_size)",
            ),
            BodyRule(
                re.compile(r"/v1/models/[^/]+/(predict|embed)"),
                settings.max_predict_bytes + PREDICT_OVERHEAD_BYTES,
                "predict_too_large",
                "send fewer or smaller images per request (TRANSFERLAB_MAX_PREDICT_BYTES)",
            ),
        ],
        "default": BodyRule(
            re.compile(".*"),
            settings.max_json_bytes,
            "body_too_large",
            "job specs and other JSON bodies are small (TRANSFERLAB_MAX_JSON_BYTES)",
        ),
    }


def clean_up_after_crashes(settings: Settings, db: Database) -> None:
    """Leftovers of processes that died mid-ingest or mid-save, and expired idempotency keys.

    Uploads still in progress in other processes hold their ingest lock and are kept.
    """
    with db.session_scope() as session:
        sweep_leftovers(
            settings.layout.ensure(), lambda i: datasets_repo.get(session, i) is not None
        )
        expired = idempotency.expire(session, settings.idempotency_ttl_s)
        upload_service.sweep_expired(session, settings)
    if expired:
        log.info("forgot %d expired idempotency keys", expired)


def check_keys_exist(settings: Settings, db: Database) -> None:
    """Production refuses to start without an API key; dev says how to make one."""
    with db.session_scope() as session:
        active = key_service.count_active(session)
    if active:
        return
    how = "create one with `transferlab keys create --scopes admin --name ops`"
    if settings.environment == "production":
        raise StartupRefused(f"no API key exists, so nobody could use the API; {how}")
    log.warning("no API key exists: every /v1 request will get 401; %s", how)
