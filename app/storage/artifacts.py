"""Artifacts by key. The database stores keys such as ``models/<id>``, never paths; one store
resolves them. Today that is a folder (the data directory, shared by the API and the workers);
an object store would be another class with the same methods, whose ``path`` fetches into a local
cache, and neither the API nor the worker would change.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path, PurePosixPath


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def model_key(model_id: uuid.UUID | str) -> str:
        return f"models/{model_id}"

    @staticmethod
    def checkpoint_key(job_id: uuid.UUID | str) -> str:
        """A running job's training state (app.engine.state), kept until the job ends. Workers
        on other hosts resume from it, so it lives where the models do."""
        return f"checkpoints/{job_id}"

    def path(self, key: str) -> Path:
        """The local folder of ``key``. Keys are made here, from ids; anything else is refused."""
        parts = PurePosixPath(key).parts
        if not parts or PurePosixPath(key).is_absolute() or ".." in parts:
            raise ValueError(f"not an artifact key: {key!r}")
        return self.root.joinpath(*parts)

    def delete(self, key: str) -> None:
        """Remove the artifacts under ``key`` (nothing if they are already gone)."""
        shutil.rmtree(self.path(key), ignore_errors=True)
