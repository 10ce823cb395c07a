"""Remove what a crash leaves in the data folder, without touching anyone's work in progress.

A process killed while it ingests a dataset leaves its spooled upload (``tmp/upload-<id>``, up to
the upload limit) and a half-built ``datasets/<id>/`` (with ``.staging`` inside); one killed while
it writes a model or features leaves ``<id>.partial``. Nothing else ever removes them.

Several API processes may share one data folder (``--workers 2``, or hosts over NFS), so a
process that starts must not remove another one's upload in flight. An ingest therefore holds
an exclusive ``flock`` on ``tmp/ingest-<id>.lock`` from before its first byte is written until its
row is committed (``ingest_lock``); the kernel drops the lock when the process dies, however it
dies, so "lock free" means "nobody is working on this any more". Linux NFS clients (v4, or v3
with lockd) turn ``flock`` into a lock the server arbitrates, so this holds across hosts too.

Model and feature outputs are written by workers, which take no lock: a ``.partial`` is removed
only once it has not changed for ``STALE_AFTER_S``, far longer than writing one takes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.storage.layout import LOCK_PREFIX, LOCK_SUFFIX, PARTIAL_SUFFIX, UPLOAD_PREFIX, DataLayout

__all__ = ["STALE_AFTER_S", "ingest_in_progress", "ingest_lock", "sweep_leftovers"]

log = logging.getLogger(__name__)

# Saving a model (a few hundred MB of safetensors) or a features bundle takes seconds to minutes;
# an hour without a change means its writer is gone.
STALE_AFTER_S = 3600.0
_STAGING = ".staging"  # app.storage.datasets writes an ingest's files here first


@contextmanager
def ingest_lock(layout: DataLayout, dataset_id: uuid.UUID) -> Iterator[Path]:
    """Hold ``tmp/ingest-<id>.lock`` exclusively for the whole ingest; remove it at the end.

    Take it before the upload is spooled and release it only after the dataset's row is
    committed: in between, the upload and the folder are neither locked nor known, and a
    sweep starting at that moment would remove a finished dataset.
    """
    path = layout.ingest_lock_path(dataset_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock_file(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield path
    finally:
        # Unlinked while still locked: a sweep that opened the file before sees it free only
        # once the row is committed, so it then finds the row (or nothing left to remove).
        path.unlink(missing_ok=True)
        os.close(fd)


def _lock_file(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A sweep may have removed the (still unlocked) file between our open and our
            # flock; a lock on a file nobody else can open protects nothing, so start again.
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return fd
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def ingest_in_progress(layout: DataLayout, dataset_id: uuid.UUID) -> bool:
    """Whether a live process holds this dataset's ingest lock (no lock file: no)."""
    try:
        fd = os.open(layout.ingest_lock_path(dataset_id), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our own lock, if we got one
    return False


def sweep_leftovers(
    layout: DataLayout,
    is_known_dataset: Callable[[uuid.UUID], bool],
    *,
    stale_after_s: float = STALE_AFTER_S,
    now: float | None = None,
) -> list[Path]:
    """Remove crash leftovers; return what was removed. Each removal is logged at WARNING.

    - ``tmp/upload-<id>``: an upload whose ingest is not running (locked) any more;
    - ``datasets/<id>/``: a folder whose ingest is not running and which has no database row
      (a folder with a row is a dataset and is never removed);
    - ``datasets/<id>/.staging``: inside a dataset with a row, when no ingest is running;
    - ``models/<id>.partial``, ``models/<id>/bundle/*.partial``, ``features/<id>.partial``:
      unchanged for ``stale_after_s``;
    - ``tmp/ingest-<id>.lock``: a lock file nobody holds.

    Names that are not ``<uuid>`` with the expected prefix or suffix are left alone. If
    ``is_known_dataset`` raises, that folder is kept: when in doubt, keep.
    """
    now = time.time() if now is None else now
    sweep = _Sweep(layout, is_known_dataset)
    sweep.uploads()
    sweep.datasets()
    sweep.partials(now - stale_after_s)
    sweep.locks()
    return sweep.removed


class _Sweep:
    def __init__(self, layout: DataLayout, is_known: Callable[[uuid.UUID], bool]) -> None:
        self.layout = layout
        self.is_known = is_known
        self.removed: list[Path] = []

    def uploads(self) -> None:
        for path, dataset_id in _named(self.layout.tmp, UPLOAD_PREFIX, ""):
            # A spool is only ever read by its own ingest, so once that is over it is garbage
            # whether or not the dataset got a row.
            if not ingest_in_progress(self.layout, dataset_id):
                self._remove(path, "upload spool of an ingest that is no longer running")

    def datasets(self) -> None:
        for path, dataset_id in _named(self.layout.datasets, "", ""):
            if not path.is_dir() or ingest_in_progress(self.layout, dataset_id):
                continue
            try:
                known = self.is_known(dataset_id)
            except Exception:
                log.warning("kept %s: could not ask the database about it", path, exc_info=True)
                continue
            if not known:
                self._remove(path, "dataset folder with no database row, from an ingest that died")
            elif (path / _STAGING).exists():
                self._remove(path / _STAGING, "staging folder left inside a finished dataset")

    def partials(self, cutoff: float) -> None:
        reason = "partial output unchanged for over an hour; its writer is gone"
        for root in (self.layout.models, self.layout.features):
            for path, _ in _named(root, "", PARTIAL_SUFFIX):
                if _last_change(path) < cutoff:
                    self._remove(path, reason)
        for model_dir, _ in _named(self.layout.models, "", ""):
            bundle = model_dir / "bundle"
            if not bundle.is_dir() or bundle.is_symlink():
                continue
            for path in sorted(bundle.glob(f"*{PARTIAL_SUFFIX}")):
                if _last_change(path) < cutoff:
                    self._remove(path, "partial download bundle unchanged for over an hour")

    def locks(self) -> None:
        for path, dataset_id in _named(self.layout.tmp, LOCK_PREFIX, LOCK_SUFFIX):
            if not ingest_in_progress(self.layout, dataset_id):
                self._remove(path, "ingest lock file of a process that is gone")

    def _remove(self, path: Path, reason: str) -> None:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return  # another process swept it first
        except OSError:
            log.error("could not remove %s (%s)", path, reason, exc_info=True)
            return
        log.warning("removed %s: %s", path, reason)
        self.removed.append(path)


def _named(folder: Path, prefix: str, suffix: str) -> Iterator[tuple[Path, uuid.UUID]]:
    """Entries of ``folder`` named ``<prefix><uuid><suffix>`` (the uuid in canonical form)."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        core = name[len(prefix) : len(name) - len(suffix)]
        try:
            parsed = uuid.UUID(core)
        except ValueError:
            continue
        if str(parsed) == core:
            yield folder / name, parsed


def _last_change(path: Path) -> float:
    """The newest mtime of the path and, for a folder, its direct entries (a file being written
    changes its own mtime, not its folder's)."""
    try:
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for entry in os.scandir(path):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except FileNotFoundError:
        return float("inf")  # gone already: nothing to do
    return newest
