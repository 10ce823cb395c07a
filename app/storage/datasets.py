"""Turn an uploaded archive into a validated, immutable dataset folder.

    <dataset_dir>/
      train/<class>/<rest of path>    accepted images only
      val/<class>/<rest of path>      only if the archive had val/ (or valid/, validation/)
      images/<path in the archive>    an unlabeled dataset's images (kind "unlabeled": any
                                      folder layout, folder names are not classes)
      manifest.json                   classes, train/val lists (or the unlabeled images) and the
                                      ingest report; written last, so a folder without it is not
                                      a dataset

``ingest_archive`` is for the API (after the upload is on disk), ``load_manifest`` (from
``manifest``) for the worker. Archive safety lives in ``archive``, image checks in ``images``,
duplicates and statistics in ``duplicates`` and ``report``, ``labels.csv`` in ``manifest_csv``;
this module decides the layout and whether the result is a usable dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.storage.archive import (
    ArchiveLimits,
    DatasetRejected,
    Extraction,
    StagedFile,
    extract_archive,
    safe_parts,
)
from app.storage.duplicates import Fingerprinter
from app.storage.images import ImageRejected, open_image
from app.storage.manifest import (
    DATASET_KINDS,
    LABELLED,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    UNLABELED,
    UNLABELED_DIR,
    DatasetCorrupt,
    DatasetKind,
    DatasetManifest,
    load_manifest,
)
from app.storage.manifest_csv import MANIFEST_CSV, Row, check_rows, read_labels_csv
from app.storage.report import DEDUPE_MODES, Dedupe, ImageInfo, analyze

__all__ = [
    "DATASET_KINDS",
    "DEDUPE_MODES",
    "LABELLED",
    "UNLABELED",
    "DatasetCorrupt",
    "DatasetKind",
    "DatasetManifest",
    "DatasetRejected",
    "DatasetReport",
    "Dedupe",
    "IngestLimits",
    "ingest_archive",
    "load_manifest",
]

log = logging.getLogger(__name__)

_STAGING = ".staging"  # a hidden name, so no class folder can collide with it
_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val"}
_SYSTEM_NAMES = {
    "__macosx",
    "thumbs.db",
    "desktop.ini",
    "$recycle.bin",
    "system volume information",
}
_NOT_IN_CLASS = "not inside a class folder; put each class's images in a folder named after it"
# How many rejection reasons per class an empty-class error quotes.
_REASONS_QUOTED = 3


@dataclass(frozen=True)
class IngestLimits:
    max_entries: int = 100_000  # archive members (files + dirs)
    max_total_bytes: int = 10 * 2**30  # total uncompressed bytes actually written
    max_ratio: float = 100.0  # total uncompressed bytes / archive file size
    max_image_pixels: int = 89_478_485  # width*height per image (Pillow's default bomb limit)
    # The ratio is taken against at least this many archive bytes: a tar.gz of a few tiny files
    # is mostly zero padding and can expand >100x while honest. 100 x 64 KiB = 6.4 MiB written is
    # harmless, and a real bomb (20 MiB of zeros deflates to 20 KiB) is still refused.
    ratio_floor_bytes: int = 64 * 2**10

    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_entries=self.max_entries,
            max_total_bytes=self.max_total_bytes,
            max_ratio=self.max_ratio,
            ratio_floor_bytes=self.ratio_floor_bytes,
        )


@dataclass(frozen=True)
class DatasetReport:
    # sha256 over the sorted (stored relpath, sha256 of bytes) of accepted images: the same
    # images give the same hash whether they came in a zip or a tar, wrapped or not.
    sha256: str
    format: str  # "zip" | "tar"
    classes: list[str]  # sorted
    splits: dict[str, dict[str, int]]  # {"train": {class: n}, "val": {class: n}}
    rejected: list[dict[str, str]]  # [{"path": <path inside archive>, "reason": ...}]
    num_images: int
    total_bytes: int  # bytes of accepted images on disk
    # app.storage.report: duplicate groups, train/val leakage, what dedupe removed, size/mode
    # histograms and class balance, and warnings ({code, message, count, examples}).
    duplicates: dict[str, Any] = field(default_factory=dict)
    leakage: dict[str, Any] = field(default_factory=dict)
    dedupe: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    kind: DatasetKind = LABELLED

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("kind")  # the dataset's own field (and the manifest's)
        if self.kind == UNLABELED:
            # No labels: no classes, no splits, no train/val leakage to report.
            for key in ("classes", "splits", "leakage"):
                out.pop(key)
        return out


def ingest_archive(
    archive_path: Path,
    dest_dir: Path,
    limits: IngestLimits,
    *,
    dedupe: Dedupe = "none",
    analyze: bool = True,
    kind: DatasetKind = LABELLED,
) -> DatasetReport:
    """Extract, validate and lay out the archive in ``dest_dir``; return the report.

    ``kind="unlabeled"`` takes images in any folder layout (nested folders are fine, their
    names are not classes), under the same safety limits and image checks.

    ``dedupe`` drops exact or near copies within a split and class (``app.storage.report``);
    ``analyze=False`` leaves duplicates, leakage and statistics out of the report (for
    benchmarks that measure what they cost). ``dest_dir`` must not exist. On any failure it is
    removed again and the error re-raised (``DatasetRejected`` for everything the uploader can
    fix).
    """
    dest_dir.mkdir(parents=True)  # FileExistsError before we own it: never delete someone's dir
    try:
        return _ingest(archive_path, dest_dir, limits, dedupe, analyze, kind)
    except BaseException:
        shutil.rmtree(dest_dir, ignore_errors=True)
        if dest_dir.exists():
            log.error("could not remove the failed dataset folder %s", dest_dir)
        raise


# -- the steps ---------------------------------------------------------------------------------


def _ingest(
    archive_path: Path,
    dest_dir: Path,
    limits: IngestLimits,
    dedupe: Dedupe,
    analyzed: bool,
    kind: DatasetKind,
) -> DatasetReport:
    if dedupe not in DEDUPE_MODES:
        raise ValueError(f"dedupe must be one of {DEDUPE_MODES}, not {dedupe!r}")
    if kind not in DATASET_KINDS:
        raise ValueError(f"kind must be one of {DATASET_KINDS}, not {kind!r}")
    staging = dest_dir / _STAGING
    staging.mkdir()
    unlabeled = kind == UNLABELED
    skip = _skip_hidden if unlabeled else _skip_early
    extraction = extract_archive(archive_path, staging, limits.archive_limits(), skip)
    layout = _UnlabeledLayout(extraction) if unlabeled else _Layout.of(extraction)
    placed = layout.place(dest_dir, limits.max_image_pixels, analyzed)
    shutil.rmtree(staging)
    sections: dict[str, Any] = {}
    if analyzed:
        analysis = analyze(placed.infos, placed.prints, dedupe)
        placed.drop([placed.infos[i].rel for i in analysis.drop], dest_dir)
        sections = analysis.sections
    report = placed.report(extraction.format, sections, kind)
    _write_manifest(dest_dir, placed, report)
    return report


def _is_hidden(part: str) -> bool:
    return part.startswith(".") or part.lower() in _SYSTEM_NAMES


def _skip_hidden(parts: tuple[str, ...]) -> str | None:
    """Hidden and system files (``.DS_Store``, ``__MACOSX/``): never worth writing."""
    if any(_is_hidden(p) for p in parts):
        return "hidden or system file"
    return None


def _skip_early(parts: tuple[str, ...]) -> str | None:
    """Files not worth writing at all (the rest are judged once the whole archive is seen)."""
    if reason := _skip_hidden(parts):
        return reason
    if len(parts) == 1 and parts[0].lower() != MANIFEST_CSV:
        return _NOT_IN_CLASS
    return None


@dataclass
class _Placed:
    """What ended up on disk, and why the rest did not."""

    classes: list[str]
    has_val: bool
    train: list[tuple[str, str, StagedFile]]  # (relpath, class, file)
    val: list[tuple[str, str, StagedFile]]
    rejected: list[dict[str, str]]
    infos: list[ImageInfo]  # of train + val (or images), in the order they were placed
    prints: list  # their Fingerprints, when analysed
    # An unlabeled dataset's images: (relpath, "", file); train and val are empty then.
    images: list[tuple[str, str, StagedFile]] = field(default_factory=list)

    def drop(self, rels: list[str], dest_dir: Path) -> None:
        """Remove these placed images (dedupe) from disk and from the lists."""
        gone = set(rels)
        for rel in gone:
            (dest_dir / rel).unlink()
        self.train = [t for t in self.train if t[0] not in gone]
        self.val = [t for t in self.val if t[0] not in gone]
        self.images = [t for t in self.images if t[0] not in gone]

    def report(self, fmt: str, sections: dict[str, Any], kind: DatasetKind) -> DatasetReport:
        accepted = self.train + self.val + self.images
        digest = hashlib.sha256()
        # JSON keeps the encoding unambiguous whatever characters the paths hold.
        pairs = sorted((rel, f.sha256) for rel, _, f in accepted)
        digest.update(json.dumps(pairs, ensure_ascii=False).encode("utf-8"))
        splits = {"train": _counts(self.train, self.classes)} if kind == LABELLED else {}
        if self.has_val:
            splits["val"] = _counts(self.val, self.classes)
        return DatasetReport(
            sha256=digest.hexdigest(),
            format=fmt,
            classes=self.classes,
            splits=splits,
            rejected=sorted(self.rejected, key=lambda r: (r["path"], r["reason"])),
            num_images=len(accepted),
            total_bytes=sum(f.size for _, _, f in accepted),
            kind=kind,
            **sections,
        )


def _counts(items: list[tuple[str, str, StagedFile]], classes: list[str]) -> dict[str, int]:
    counts = Counter(cls for _, cls, _ in items)
    return {cls: counts[cls] for cls in classes}


@dataclass
class _Layout:
    """Where each staged file belongs, decided once every member name is known."""

    prefix: int  # components to drop (1 when a wrapping folder is stripped)
    split_layout: bool
    train_classes: set[str]  # class folders under train/ (or the top level), files or not
    has_val: bool
    extraction: Extraction
    # With a labels.csv (app.storage.manifest_csv): the file, its folder, and its rows by path.
    manifest: StagedFile | None = None
    base: tuple[str, ...] = ()
    rows: dict[tuple[str, ...], Row] = field(default_factory=dict)

    @classmethod
    def of(cls, extraction: Extraction) -> _Layout:
        manifests = sorted(
            (
                f
                for f in extraction.files
                if f.parts[-1].lower() == MANIFEST_CSV and len(f.parts) <= 2
            ),
            key=lambda f: len(f.parts),
        )
        if manifests:
            return cls._of_manifest(extraction, manifests[0])
        dirs = [d for d in extraction.dirs if not any(_is_hidden(p) for p in d)]
        paths = [f.parts for f in extraction.files] + [(*d, "") for d in dirs]
        # A dir entry gets a "" leaf so it counts as "inside" its parent like a file does.
        prefix = 1 if _wrapped(paths) else 0
        paths = [p[prefix:] for p in paths if len(p) > prefix]
        split_layout = any(_SPLIT_NAMES.get(p[0].lower()) == "train" for p in paths if len(p) > 1)
        train_classes: set[str] = set()
        val_classes: set[str] = set()
        has_val = False
        for p in paths:
            if split_layout:
                split = _SPLIT_NAMES.get(p[0].lower())
                has_val = has_val or split == "val"
                if split == "train" and len(p) > 2:
                    train_classes.add(p[1])
                elif split == "val" and len(p) > 2:
                    val_classes.add(p[1])
            elif len(p) > 1:
                train_classes.add(p[0])
        _check_case_conflicts(train_classes | val_classes)
        return cls(prefix, split_layout, train_classes, has_val, extraction)

    @classmethod
    def _of_manifest(cls, extraction: Extraction, manifest: StagedFile) -> _Layout:
        base = manifest.parts[:-1]
        rows = read_labels_csv(manifest.path, manifest.name)
        present = {f.parts[len(base) :] for f in extraction.files if f.parts[: len(base)] == base}
        check_rows(rows, present, manifest.name)
        train_classes = {r.label for r in rows.values() if r.split == "train"}
        _check_case_conflicts({r.label for r in rows.values()})
        has_val = any(r.split == "val" for r in rows.values())
        return cls(0, True, train_classes, has_val, extraction, manifest, base, rows)

    def destination(self, parts: tuple[str, ...]) -> tuple[str, str, str] | str:
        """(split, class, relpath) for a file, or the reason it has no place."""
        if self.manifest is not None:
            row = (
                self.rows.get(parts[len(self.base) :])
                if parts[: len(self.base)] == self.base
                else None
            )
            if row is None:
                return f"not listed in {self.manifest.name}"
            return row.split, row.label, "/".join((row.split, row.label, *row.path))
        parts = parts[self.prefix :]
        if len(parts) < 2:
            return _NOT_IN_CLASS
        if self.split_layout:
            split = _SPLIT_NAMES.get(parts[0].lower())
            if split is None:
                return "outside train/ and val/; in a train/val archive every image is in one"
            parts = parts[1:]
            if len(parts) < 2:
                return _NOT_IN_CLASS
        else:
            split = "train"
        cls = parts[0]
        if split == "val" and cls not in self.train_classes:
            return f"class {cls!r} is in val/ but not in train/; add it to train/ or remove it"
        return split, cls, "/".join((split, *parts))

    def train_class_of(self, name: str) -> str | None:
        """The train class folder an archive member sits in, if any (for error messages)."""
        where = self.destination(safe_parts(name))
        return where[1] if not isinstance(where, str) and where[0] == "train" else None

    def place(self, dest_dir: Path, max_pixels: int, analyzed: bool) -> _Placed:
        rejected = list(self.extraction.skipped)
        kept: dict[str, list[tuple[str, str, StagedFile]]] = {"train": [], "val": []}
        infos: list[ImageInfo] = []
        prints = Fingerprinter()
        taken: set[str] = set()
        root = dest_dir.resolve()
        for f in self.extraction.files:
            if f is self.manifest:
                f.path.unlink()
                continue
            where = self.destination(f.parts)
            img = None
            if isinstance(where, str):
                reason: str | None = where
            elif where[2] in taken:
                reason = "a file with the same path came earlier in the archive"
            else:
                # Decoded once: the check, the statistics and the fingerprint share the pixels.
                try:
                    img = open_image(f.path, max_pixels)
                except ImageRejected as exc:
                    reason = exc.message
                else:
                    reason = _move(f.path, dest_dir / where[2], root)
            if reason is not None or img is None:
                if img is not None:
                    img.close()
                f.path.unlink(missing_ok=True)
                rejected.append({"path": f.name, "reason": reason or "not placed"})
                continue
            assert not isinstance(where, str)  # a reason was set otherwise
            split, cls, rel = where
            with img:
                infos.append(ImageInfo(rel, split, cls, f.sha256, img.width, img.height, img.mode))
                if analyzed:
                    prints.add(img)
            taken.add(rel)
            kept[split].append((rel, cls, f))
        placed = _Placed(
            classes=sorted({cls for _, cls, _ in kept["train"]}),
            has_val=self.has_val,
            train=sorted(kept["train"], key=lambda t: t[0]),
            val=sorted(kept["val"], key=lambda t: t[0]),
            rejected=rejected,
            infos=infos,
            prints=prints.finish() if analyzed else [],
        )
        self._check_usable(placed)
        return placed

    def _check_usable(self, placed: _Placed) -> None:
        if not placed.train and not placed.val:
            raise DatasetRejected(
                "the archive contains no usable images; put each class's images (JPEG, PNG, "
                "BMP, GIF, WEBP or TIFF) in a folder named after the class (images without "
                "labels, for a domain-adaptation target: upload them with kind=unlabeled)",
                code="dataset_no_images",
                details={
                    "class_folders": sorted(self.train_classes),
                    "rejected": placed.rejected[:20],
                },
            )
        empty = sorted(self.train_classes - set(placed.classes))
        if empty:
            reasons: dict[str, list[str]] = {cls: [] for cls in empty}
            for r in placed.rejected:
                cls = self.train_class_of(r["path"])
                if cls in reasons and len(reasons[cls]) < _REASONS_QUOTED:
                    reasons[cls].append(f"{r['path']}: {r['reason']}")
            why = "; ".join(f"{cls!r}: {', '.join(reasons[cls]) or 'no files'}" for cls in empty)
            raise DatasetRejected(
                f"class folder(s) {', '.join(map(repr, empty))} have no valid image ({why}); "
                "add images or remove the folder",
                code="dataset_empty_class",
                details={"classes": empty, "reasons": reasons},
            )
        if len(placed.classes) < 2:
            raise DatasetRejected(
                f"found {len(placed.classes)} class with images ({', '.join(placed.classes)}); "
                "a classifier needs at least 2, each in its own folder",
                code="dataset_too_few_classes",
                details={"classes": placed.classes},
            )


@dataclass
class _UnlabeledLayout:
    """Every image, wherever it is in the archive, kept under ``images/`` with its archive path:
    folder names are not classes, nested folders and a wrapping folder are fine."""

    extraction: Extraction

    def place(self, dest_dir: Path, max_pixels: int, analyzed: bool) -> _Placed:
        rejected = list(self.extraction.skipped)
        kept: list[tuple[str, str, StagedFile]] = []
        infos: list[ImageInfo] = []
        prints = Fingerprinter()
        taken: set[str] = set()
        root = dest_dir.resolve()
        for f in self.extraction.files:
            rel = "/".join((UNLABELED_DIR, *f.parts))
            img = None
            if rel in taken:
                reason: str | None = "a file with the same path came earlier in the archive"
            else:
                try:
                    img = open_image(f.path, max_pixels)
                except ImageRejected as exc:
                    reason = exc.message
                else:
                    reason = _move(f.path, dest_dir / rel, root)
            if reason is not None or img is None:
                if img is not None:
                    img.close()
                f.path.unlink(missing_ok=True)
                rejected.append({"path": f.name, "reason": reason or "not placed"})
                continue
            with img:
                # One "split" and no label: dedupe then keeps one of each group of copies.
                infos.append(ImageInfo(rel, UNLABELED_DIR, "", f.sha256, img.width, img.height,
                                       img.mode))  # fmt: skip
                if analyzed:
                    prints.add(img)
            taken.add(rel)
            kept.append((rel, "", f))
        if not kept:
            raise DatasetRejected(
                "the archive contains no usable images (JPEG, PNG, BMP, GIF, WEBP or TIFF)",
                code="dataset_no_images",
                details={"rejected": rejected[:20]},
            )
        return _Placed(
            classes=[],
            has_val=False,
            train=[],
            val=[],
            rejected=rejected,
            infos=infos,
            prints=prints.finish() if analyzed else [],
            images=sorted(kept, key=lambda t: t[0]),
        )


def _check_case_conflicts(classes: set[str]) -> None:
    """Refuse class folders whose names differ only in case (``cat``, ``Cat``, ``CAT``).

    They would silently be separate classes here, yet the same folder once unpacked on macOS or
    Windows, and are almost always one class typed twice. Train and val count together: a
    ``val/Cat`` beside ``train/cat`` would otherwise lose every val image it holds.
    """
    groups: dict[str, set[str]] = {}
    for cls in classes:
        groups.setdefault(cls.casefold(), set()).add(cls)
    conflicts = sorted(sorted(names) for names in groups.values() if len(names) > 1)
    if conflicts:
        listed = "; ".join(", ".join(map(repr, names)) for names in conflicts)
        raise DatasetRejected(
            f"class folders differ only in upper/lower case ({listed}); merge each group into "
            "one folder or rename them so the class names differ in more than case",
            code="dataset_class_case_conflict",
            details={"conflicts": conflicts},
        )


def _wrapped(paths: list[tuple[str, ...]]) -> bool:
    """True when one folder holds everything and it holds folders (so it is not itself a class).

    Root-level files are ignored here: they are rejected anyway, and a stray README next to the
    wrapping folder should not turn the whole dataset into one class.
    """
    inside = [p for p in paths if len(p) > 1]
    tops = {p[0] for p in inside}
    if len(tops) != 1:
        return False
    (top,) = tops
    return _SPLIT_NAMES.get(top.lower()) != "train" and any(len(p) > 2 for p in inside)


def _move(src: Path, dest: Path, root: Path) -> str | None:
    """Move a validated file to its place; the reason when it cannot have that place."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Defence in depth: the names were checked already and we never create links, so this
        # can only fail if the checks above are wrong.
        if not dest.parent.resolve().is_relative_to(root):
            raise DatasetRejected(
                f"archive entry resolves outside the dataset folder ({dest})",
                code="archive_unsafe_path",
                details={"entry": str(dest)},
            )
        if dest.exists():
            return "a file with the same path came earlier in the archive"
        src.rename(dest)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        return "its path clashes with another entry (a file and a folder of the same name)"
    return None


def _write_manifest(dest_dir: Path, placed: _Placed, report: DatasetReport) -> None:
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": report.kind,
        "classes": placed.classes,
        "train": [[rel, cls] for rel, cls, _ in placed.train],
        "val": [[rel, cls] for rel, cls, _ in placed.val],
        "images": [rel for rel, _, _ in placed.images],
        "report": report.to_dict(),
    }
    tmp = dest_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, dest_dir / MANIFEST_NAME)
