"""What the dataset report says beyond counts: duplicates, leakage, statistics and warnings.

Everything here works on facts gathered while the images were decoded for validation (size,
mode, fingerprint), so the report costs no second pass over the files.

Duplicates are grouped over the whole dataset; a group is *within a class* when all its images
share split and class, *across classes* when they carry different labels (the same image under
two names), and *across splits* when train and val both hold one (leakage: validation scores
then measure memory, not generalisation).

``dedupe`` keeps one image (the largest, then the shortest name) of each group's images that
share split and class, and drops the others. It never drops across classes (which label is
right is the uploader's call) nor across splits (that would silently change the validation
set): those stay, and the report and any job trained on the dataset warn about them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from app.storage.duplicates import HASH_NAME, MAX_DISTANCE, Fingerprint, exact_groups, near_groups

Dedupe = Literal["none", "exact", "near"]
DEDUPE_MODES: tuple[str, ...] = ("none", "exact", "near")

# Shorter side below this: timm backbones downsample 32x, so such an image is mostly upsampling
# blur at any input size (MNIST's 28 px digits are tiny by this measure, and still train).
TINY_SIDE = 32
# Longer side over this many times the shorter: a centre crop to a square loses most of it.
EXTREME_ASPECT = 4.0
# Largest / smallest class in train: past this, accuracy mostly reflects the large classes.
IMBALANCE_WARN = 10.0
SIZE_BINS = ((0, "<32"), (32, "32-63"), (64, "64-127"), (128, "128-255"), (256, "256-511"))
SIZE_BINS_TOP = ((512, "512-1023"), (1024, ">=1024"))
EXAMPLE_GROUPS = 10  # groups quoted per kind
EXAMPLE_MEMBERS = 5  # images quoted per group
EXAMPLE_PATHS = 20  # paths quoted per warning


@dataclass(frozen=True)
class ImageInfo:
    rel: str  # stored path, e.g. train/cat/a.jpg
    split: str
    label: str
    sha256: str
    width: int
    height: int
    mode: str


@dataclass
class Analysis:
    drop: set[int]  # indices of images removed by dedupe
    sections: dict[str, Any] = field(default_factory=dict)  # report keys -> values


def analyze(images: Sequence[ImageInfo], prints: Sequence[Fingerprint], dedupe: Dedupe) -> Analysis:
    """Duplicates, leakage and what dedupe drops; then statistics and warnings of what is kept."""
    exact = exact_groups([i.sha256 for i in images])
    near = near_groups(prints) if len(prints) == len(images) else []
    chosen = {"none": [], "exact": exact, "near": near}[dedupe]
    drop, removed = _dedupe(images, chosen)
    kept = [img for index, img in enumerate(images) if index not in drop]
    leakage = _leakage(images, near or exact, exact)
    duplicates = {
        "hash": HASH_NAME,
        "max_distance": MAX_DISTANCE,
        "exact": _summary(images, exact),
        "near": _summary(images, near),
    }
    warnings = _warnings(kept, duplicates, leakage)
    return Analysis(
        drop=drop,
        sections={
            "duplicates": duplicates,
            "leakage": leakage,
            "dedupe": {"mode": dedupe, "removed": len(removed), "examples": removed[:50]},
            "statistics": _statistics(kept),
            "warnings": warnings,
        },
    )


def _dedupe(images: Sequence[ImageInfo], groups: list[list[int]]) -> tuple[set[int], list[dict]]:
    drop: set[int] = set()
    removed: list[dict[str, str]] = []
    for group in groups:
        first: dict[tuple[str, str], int] = {}
        for index in sorted(group, key=lambda i: _keep_first(images[i])):
            where = (images[index].split, images[index].label)
            if where in first:
                drop.add(index)
                removed.append({"path": images[index].rel, "kept": images[first[where]].rel})
            else:
                first[where] = index
    return drop, sorted(removed, key=lambda r: r["path"])


def _keep_first(img: ImageInfo) -> tuple[int, int, str]:
    """Which copy dedupe keeps: the most pixels, then the shortest name ("a.jpg" over
    "a (1).jpg" or "a-copy.jpg"), then the first path."""
    return -img.width * img.height, len(img.rel), img.rel


def _summary(images: Sequence[ImageInfo], groups: list[list[int]]) -> dict[str, Any]:
    across_classes = [g for g in groups if len({images[i].label for i in g}) > 1]
    across_splits = [g for g in groups if len({images[i].split for i in g}) > 1]
    within = [g for g in groups if len({(images[i].split, images[i].label) for i in g}) == 1]
    members = sum(len(g) for g in groups)

    def quote(selected: list[list[int]]) -> list[list[dict[str, str]]]:
        return [
            [
                {"path": images[i].rel, "split": images[i].split, "class": images[i].label}
                for i in sorted(g, key=lambda i: images[i].rel)[:EXAMPLE_MEMBERS]
            ]
            for g in selected[:EXAMPLE_GROUPS]
        ]

    return {
        "groups": len(groups),
        "images": members,
        "redundant": members - len(groups),
        "within_class": len(within),
        "across_classes": len(across_classes),
        "across_splits": len(across_splits),
        "examples": {
            "within_class": quote(within),
            "across_classes": quote(across_classes),
            "across_splits": quote(across_splits),
        },
    }


def _leakage(
    images: Sequence[ImageInfo], groups: list[list[int]], exact: list[list[int]]
) -> dict[str, Any]:
    """Validation images with a copy (exact or near) in train."""
    val_total = sum(1 for i in images if i.split == "val")
    leaked: dict[int, list[int]] = {}
    for group in groups:
        train = [i for i in group if images[i].split == "train"]
        if train:
            for i in group:
                if images[i].split == "val":
                    leaked[i] = train
    exact_leaked = {
        i
        for group in exact
        if any(images[j].split == "train" for j in group)
        for i in group
        if images[i].split == "val"
    }
    examples = [
        {"val": images[i].rel, "train": sorted(images[j].rel for j in train)[:EXAMPLE_MEMBERS]}
        for i, train in sorted(leaked.items(), key=lambda kv: images[kv[0]].rel)[:EXAMPLE_GROUPS]
    ]
    return {
        "val_images": len(leaked),
        "val_total": val_total,
        "fraction": round(len(leaked) / val_total, 4) if val_total else 0.0,
        "exact": len(exact_leaked),
        "examples": examples,
    }


def _statistics(images: Sequence[ImageInfo]) -> dict[str, Any]:
    sizes = Counter(f"{i.width}x{i.height}" for i in images)
    histogram = Counter(_size_bin(min(i.width, i.height)) for i in images)
    order = [label for _, label in SIZE_BINS + SIZE_BINS_TOP]
    widths = [i.width for i in images]
    heights = [i.height for i in images]
    stats: dict[str, Any] = {
        "sizes": {
            "shorter_side_histogram": {b: histogram[b] for b in order if histogram[b]},
            "most_common": [{"size": s, "count": n} for s, n in sizes.most_common(5)],
            "width": _spread(widths),
            "height": _spread(heights),
        },
        "modes": dict(sorted(Counter(i.mode for i in images).items())),
        "class_balance": {},
    }
    for split in ("train", "val"):
        counts = Counter(i.label for i in images if i.split == split)
        if counts:
            (largest, most), (smallest, least) = counts.most_common()[0], counts.most_common()[-1]
            stats["class_balance"][split] = {
                "largest": {"class": largest, "images": most},
                "smallest": {"class": smallest, "images": least},
                "imbalance_ratio": round(most / least, 2),
            }
    return stats


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _size_bin(side: int) -> str:
    label = SIZE_BINS[0][1]
    for start, name in SIZE_BINS + SIZE_BINS_TOP:
        if side >= start:
            label = name
    return label


def _warnings(
    images: Sequence[ImageInfo], duplicates: dict[str, Any], leakage: dict[str, Any]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def warn(code: str, message: str, paths: list[str], count: int | None = None) -> None:
        out.append(
            {
                "code": code,
                "message": message,
                "count": len(paths) if count is None else count,
                "examples": sorted(paths)[:EXAMPLE_PATHS],
            }
        )

    tiny = [i.rel for i in images if min(i.width, i.height) < TINY_SIDE]
    if tiny:
        warn(
            "tiny_images",
            f"{len(tiny)} image(s) are under {TINY_SIDE} px on their shorter side; a model "
            "sees them mostly as upsampling blur",
            tiny,
        )
    aspect = [
        i.rel for i in images if max(i.width, i.height) > EXTREME_ASPECT * min(i.width, i.height)
    ]
    if aspect:
        warn(
            "extreme_aspect",
            f"{len(aspect)} image(s) are over {EXTREME_ASPECT:g} times longer than wide (or "
            "wider than long); a square crop keeps little of them",
            aspect,
        )
    for split in ("train", "val"):
        counts = Counter(i.label for i in images if i.split == split)
        if len(counts) > 1:
            (big, most), (small, least) = counts.most_common()[0], counts.most_common()[-1]
            if most / least > IMBALANCE_WARN:
                warn(
                    "class_imbalance",
                    f"in {split}, class {big!r} has {most} images and {small!r} only {least} "
                    f"({most / least:.1f}x); consider collecting more of the small classes",
                    [],
                    count=0,
                )
    near = duplicates["near"]
    conflicts = near["examples"]["across_classes"]
    if near["across_classes"]:
        warn(
            "label_conflicts",
            f"{near['across_classes']} group(s) of (near-)identical images carry different "
            "labels; keep each image under one class",
            [m["path"] for group in conflicts for m in group],
            count=near["across_classes"],
        )
    if leakage["val_images"]:
        warn(
            "val_leakage",
            f"{leakage['val_images']} of {leakage['val_total']} validation image(s) "
            f"({leakage['fraction']:.1%}) have a copy in train; validation scores will be "
            "optimistic",
            [e["val"] for e in leakage["examples"]],
            count=leakage["val_images"],
        )
    return out
