"""Logging for every process: text for a terminal, JSON (one object a line) for a log pipeline.

Both carry ``request_id`` and ``job_id`` when set. ``logging_config`` is a ``dictConfig`` dict, so
uvicorn can apply the same setup in each of its worker processes (``uvicorn.run(log_config=...)``).
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from app.observability.context import job_id_var, request_id_var
from app.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ContextFilter(logging.Filter):
    """Copies the request and job ids of the current context onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("request_id", request_id_var), ("job_id", job_id_var)):
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """The usual text line, with ``[request_id=... job_id=...]`` appended when they are set."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = " ".join(
            f"{name}={getattr(record, name)}"
            for name in ("request_id", "job_id", "error_code")
            if getattr(record, name, None) is not None
        )
        if not tags:
            return line
        # Keep the tags on the first line: a traceback below it stays readable.
        first, sep, rest = line.partition("\n")
        return f"{first} [{tags}]{sep}{rest}"


def logging_config(settings: Settings, service: str, level: str | int = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: one stderr handler on the root logger."""
    if settings.json_logs:
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,  # ISO 8601, UTC
            "static_fields": {"service": service},
        }
    else:
        formatter = {"()": "app.observability.logs.TextFormatter", "fmt": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "app.observability.logs.ContextFilter"}},
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["context"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        # uvicorn's loggers (when uvicorn is given this config) go through the root handler, so
        # they are JSON too. Its access log is replaced by the request middleware's.
        "loggers": {
            **{
                name: {"handlers": [], "propagate": True, "level": "INFO"}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            # Seven "setup plugin" lines at every migration say nothing to an operator.
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }


def configure_logging(settings: Settings, service: str, level: str | int = "INFO") -> None:
    """Set up the root logger for ``service`` ("api", "worker", "cli")."""
    logging.config.dictConfig(logging_config(settings, service, level))
