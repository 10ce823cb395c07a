"""Metrics and logs: what an operator watches.

- ``install_observability(app, settings)``: request ids, access log, request metrics, ``/metrics``
  and the self-hosted ``/docs`` (see ``install.py``).
- ``configure_logging(settings, service)``: text or JSON logs with request and job ids.
- ``job_context(job_id)``: tag the log lines of a job.
"""

from __future__ import annotations

from app.observability.context import job_context, job_id_var, request_id_var
from app.observability.install import install_observability
from app.observability.logs import configure_logging, logging_config

__all__ = [
    "configure_logging",
    "install_observability",
    "job_context",
    "job_id_var",
    "logging_config",
    "request_id_var",
]
