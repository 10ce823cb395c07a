"""The manifest of an ingested dataset (``<dataset_dir>/manifest.json``), as the worker reads it.

``app.storage.datasets`` writes it, last, when an ingest succeeds: a folder without it is not a
dataset. Every path in it is checked again on reading, so a damaged or edited manifest cannot
point the worker outside the dataset folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.errors import ServiceError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class DatasetManifest:
    classes: list[str]
    train: list[tuple[str, str]]  # (path relative to the dataset dir, class name)
    val: list[tuple[str, str]]


class DatasetCorrupt(ServiceError):
    """A stored dataset folder is unreadable: a server-side fault, not the uploader's."""

    status_code = 500
    code = "dataset_corrupt"


def load_manifest(dataset_dir: Path) -> DatasetManifest:
    """The classes and (relative path, class) lists of an ingested dataset, for the worker."""
    path = dataset_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        classes = [str(c) for c in data["classes"]]
        known = set(classes)
        lists: dict[str, list[tuple[str, str]]] = {}
        for split in ("train", "val"):
            items = [(str(p), str(c)) for p, c in data[split]]
            for rel, cls in items:
                if cls not in known or not _is_safe_relpath(rel, split):
                    raise ValueError(f"bad {split} entry {rel!r} ({cls!r})")
            lists[split] = items
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetCorrupt(
            f"the dataset at {dataset_dir} has no readable manifest ({exc})",
            details={"path": str(path)},
        ) from exc
    return DatasetManifest(classes=classes, train=lists["train"], val=lists["val"])


def _is_safe_relpath(rel: str, split: str) -> bool:
    path = PurePosixPath(rel)
    return (
        not path.is_absolute()
        and ".." not in path.parts
        and len(path.parts) >= 3
        and path.parts[0] == split
    )
