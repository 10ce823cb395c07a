"""The manifest of an ingested dataset (``<dataset_dir>/manifest.json``), as the worker reads it.

``app.storage.datasets`` writes it, last, when an ingest succeeds: a folder without it is not a
dataset. Every path in it is checked again on reading, so a damaged or edited manifest cannot
point the worker outside the dataset folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from app.errors import ServiceError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

# A labelled dataset has classes (folders or labels.csv) and train/val splits; an unlabeled one
# only images, for domain adaptation's target domain. Manifests written before kinds existed
# have no "kind" and are labelled.
DatasetKind = Literal["labelled", "unlabeled"]
LABELLED: DatasetKind = "labelled"
UNLABELED: DatasetKind = "unlabeled"
DATASET_KINDS: tuple[str, ...] = (LABELLED, UNLABELED)
UNLABELED_DIR = "images"  # where an unlabeled dataset's images are, under the dataset dir


@dataclass(frozen=True)
class DatasetManifest:
    classes: list[str]
    train: list[tuple[str, str]]  # (path relative to the dataset dir, class name)
    val: list[tuple[str, str]]
    kind: DatasetKind = LABELLED
    images: list[str] = field(default_factory=list)  # an unlabeled dataset's, relative paths

    def all_paths(self) -> list[str]:
        """Every image's relative path, whatever the kind (a target domain's pool)."""
        return [rel for rel, _ in self.train] + [rel for rel, _ in self.val] + self.images


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
        kind = data.get("kind", LABELLED)
        if kind not in DATASET_KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        images = [str(p) for p in data.get("images", [])]
        for rel in images:
            if not _is_safe_relpath(rel, UNLABELED_DIR, min_parts=2):
                raise ValueError(f"bad image entry {rel!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetCorrupt(
            f"the dataset at {dataset_dir} has no readable manifest ({exc})",
            details={"path": str(path)},
        ) from exc
    return DatasetManifest(
        classes=classes, train=lists["train"], val=lists["val"], kind=kind, images=images
    )


def _is_safe_relpath(rel: str, split: str, min_parts: int = 3) -> bool:
    path = PurePosixPath(rel)
    return (
        not path.is_absolute()
        and ".." not in path.parts
        and len(path.parts) >= min_parts
        and path.parts[0] == split
    )
