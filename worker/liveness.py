"""The worker's liveness beat: a daemon thread that touches a file while the broker answers.

Read by ``python -m worker.healthcheck`` (see there for why not ``celery inspect ping``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

from celery import Celery

from worker.healthcheck import ALIVE_FILE, BEAT_S

log = logging.getLogger(__name__)


def broker_reachable(celery: Celery, timeout: float = 5.0) -> bool:
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception as exc:
        log.warning("liveness: broker unreachable (%s: %s)", type(exc).__name__, exc)
        return False


def touch(path: Path) -> None:
    """Replace the file atomically. The temporary file is made with O_EXCL (mkstemp) and renamed
    over ``path``: a symlink planted at either name in a shared /tmp is replaced, never
    followed (write_text followed it and overwrote the link's target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def clear(path: Path = ALIVE_FILE) -> None:
    """Remove a beat left by a previous run of this container, so the check fails until this
    worker has reached the broker."""
    path.unlink(missing_ok=True)


class LivenessBeat:
    def __init__(self, celery: Celery, path: Path = ALIVE_FILE, interval_s: float = BEAT_S):
        self.celery, self.path, self.interval_s = celery, path, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)

    def start(self) -> LivenessBeat:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def beat(self) -> bool:
        if not broker_reachable(self.celery):
            return False
        touch(self.path)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:  # never let the thread die: a dead beat means a restart
                log.exception("liveness beat failed")
            self._stop.wait(self.interval_s)
