"""create_app(): routers, error handlers, shared state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api import catalog, datasets, health, jobs, models
from app.api.errors import install_error_handlers
from app.api.limits import UploadSizeLimit
from app.db.session import Database
from app.observability import install_observability
from app.queue import JobQueue
from app.serving.cache import ModelCache
from app.settings import Settings, get_settings

DESCRIPTION = """
Upload an image dataset, fine-tune a pretrained backbone on it, get a versioned model, predict.

Every error has the same shape: `{"error": {"code": "...", "message": "...", "details": {}}}`;
`code` is stable and safe to branch on.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.layout.ensure()
    db = Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(
        title="TransferLab",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.queue = JobQueue(settings)
    app.state.model_cache = ModelCache(settings.model_cache_size)
    install_error_handlers(app)
    install_observability(app, settings)
    app.add_middleware(UploadSizeLimit, path="/v1/datasets", max_bytes=settings.max_upload_bytes)
    for module in (datasets, jobs, models, catalog, health):
        app.include_router(module.router)
    return app
