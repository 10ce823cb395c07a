"""The worker's Celery app: the shared configuration (app.queue) plus the task modules.

Run it with `transferlab worker`, or `celery -A worker.celery_app worker --pool solo`.
"""

from __future__ import annotations

from app.queue import create_celery
from app.settings import get_settings
from worker import signals

celery_app = create_celery(get_settings(), include=["worker.tasks"])
signals.connect(celery_app)
