"""Metrics and logs: what an operator watches. (Being built: see install_observability.)"""

from __future__ import annotations

from fastapi import FastAPI

from app.settings import Settings


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Add request metrics, request ids and the /metrics route to ``app``."""
    return None


def configure_logging(settings: Settings, service: str) -> None:
    """Set up the root logger for ``service`` ("api", "worker", "cli")."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
