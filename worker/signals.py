"""What the worker process sets up around Celery: logging, metrics, the liveness beat.

``transferlab worker`` execs Celery, so app/cli.py's logging setup does not reach this process;
Celery's signals are the hooks instead. Connected by ``worker.celery_app``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_init, worker_ready, worker_shutdown

from app.observability import configure_logging
from app.settings import get_settings
from worker import liveness
from worker.metrics import serve_metrics

log = logging.getLogger(__name__)


def connect(celery: Celery) -> None:
    beat: list[liveness.LivenessBeat] = []

    def on_setup_logging(loglevel: Any = None, **_: Any) -> None:
        # Connecting this signal stops Celery from configuring logging itself.
        configure_logging(get_settings(), "worker", level=loglevel or "INFO")

    def on_init(**_: Any) -> None:
        liveness.clear()

    def on_ready(**_: Any) -> None:
        # The liveness beat first: a metrics port that is taken must not stop the health check.
        beat.append(liveness.LivenessBeat(celery).start())
        port = get_settings().worker_metrics_port
        if port is not None:
            try:
                serve_metrics(port)
            except OSError:
                log.exception("worker metrics could not listen on port %s", port)

    def on_shutdown(**_: Any) -> None:
        for b in beat:
            b.stop(timeout=1)
        liveness.clear()

    # weak=False: the receivers are closures that nothing else holds on to.
    setup_logging.connect(on_setup_logging, weak=False)
    worker_init.connect(on_init, weak=False)
    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
