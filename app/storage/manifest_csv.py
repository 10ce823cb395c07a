"""``labels.csv``: an archive's labels as a table instead of class folders.

    path,label[,split]
    images/0001.jpg,cat,train
    images/0002.jpg,dog,val

``path`` is relative to the folder that holds ``labels.csv`` (the archive's root, or its one
wrapping folder); ``split`` is train (the default when the column or the cell is empty) or
val (also valid, validation). Every problem is reported with its row number (the header is row
1, as a spreadsheet numbers it) and the whole archive is refused: a manifest with one wrong row
usually has a systematic mistake, and training on the rows that happened to parse would hide it.
Files that no row names are skipped and listed in the report, like stray files in class folders.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from app.storage.archive import DatasetRejected

MANIFEST_CSV = "labels.csv"
MAX_MANIFEST_BYTES = 64 * 2**20  # ~1M rows of typical length; read whole, so bounded
_SPLITS = {"": "train", "train": "train", "val": "val", "valid": "val", "validation": "val"}
_ERRORS_QUOTED = 50


@dataclass(frozen=True)
class Row:
    number: int
    path: tuple[str, ...]  # normalised components, relative to the manifest's folder
    label: str
    split: str  # train | val


def read_labels_csv(path: Path, name: str) -> dict[tuple[str, ...], Row]:
    """The rows of the manifest at ``path`` (``name`` as the archive spells it), by path."""
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise _invalid(name, [f"the file is over {MAX_MANIFEST_BYTES} bytes"], [])
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # Excel writes a BOM
    except UnicodeDecodeError as exc:
        raise _invalid(
            name, [f"it is not UTF-8 text ({exc.reason} at byte {exc.start})"], []
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise _invalid(
            name, ["it is empty; the first row must be path,label[,split]"], []
        ) from None
    missing = [c for c in ("path", "label") if c not in header]
    unknown = [c for c in header if c not in ("path", "label", "split")]
    if missing or unknown or len(set(header)) != len(header):
        raise _invalid(
            name,
            [
                f"row 1 (the header) is {','.join(header)!r}; it must name the columns path, "
                "label and optionally split, each once"
            ],
            [{"row": 1, "message": "bad header"}],
        )
    col = {c: header.index(c) for c in header}
    rows: dict[tuple[str, ...], Row] = {}
    errors: list[dict[str, object]] = []
    try:
        for number, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue  # blank lines are harmless
            problem, row = _parse_row(number, cells, col, len(header))
            if problem is None and row is not None and row.path in rows:
                problem = f"path {'/'.join(row.path)!r} is already on row {rows[row.path].number}"
            if problem is not None:
                errors.append({"row": number, "message": problem})
            elif row is not None:
                rows[row.path] = row
    except csv.Error as exc:
        errors.append({"row": reader.line_num, "message": f"not valid CSV ({exc})"})
    if errors:
        listed = "; ".join(f"row {e['row']}: {e['message']}" for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise _invalid(name, [f"{listed}{more}"], errors)
    if not rows:
        raise _invalid(name, ["it has a header but no rows"], [])
    return rows


def check_rows(rows: dict[tuple[str, ...], Row], present: set[tuple[str, ...]], name: str) -> None:
    """Refuse rows naming files the archive lacks, and val labels that train does not have."""
    train_labels = {r.label for r in rows.values() if r.split == "train"}
    errors: list[dict[str, object]] = []
    for row in sorted(rows.values(), key=lambda r: r.number):
        if row.path not in present:
            errors.append(
                {"row": row.number, "message": f"{'/'.join(row.path)!r} is not in the archive"}
            )
        elif row.split == "val" and row.label not in train_labels:
            errors.append(
                {
                    "row": row.number,
                    "message": f"label {row.label!r} is in val but on no train row",
                }
            )
    if errors:
        listed = "; ".join(f"row {e['row']}: {e['message']}" for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise _invalid(name, [f"{listed}{more}"], errors)


def _parse_row(
    number: int, cells: list[str], col: dict[str, int], width: int
) -> tuple[str | None, Row | None]:
    if len(cells) != width:
        return f"has {len(cells)} cells, the header {width}", None
    path_text = cells[col["path"]].strip()
    label = unicodedata.normalize("NFC", cells[col["label"]].strip())
    split_text = cells[col["split"]].strip().lower() if "split" in col else ""
    if not path_text:
        return "path is empty", None
    parts = _relative_parts(path_text)
    if parts is None:
        return f"path {path_text!r} must be relative and stay inside the archive", None
    if problem := _label_problem(label):
        return f"label {label!r} {problem}", None
    split = _SPLITS.get(split_text)
    if split is None:
        return f"split {split_text!r} must be train or val (or empty for train)", None
    return None, Row(number, parts, label, split)


def _relative_parts(text: str) -> tuple[str, ...] | None:
    path = unicodedata.normalize("NFC", text.replace("\\", "/"))
    if path.startswith("/") or (len(path) > 1 and path[1] == ":") or "\x00" in path:
        return None
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def _label_problem(label: str) -> str | None:
    """Labels become folder names under the dataset: one safe path component."""
    if not label:
        return "is empty"
    if any(c in label for c in "/\\\x00") or label in (".", ".."):
        return "must not contain '/' or '\\' or be '.' or '..'"
    if label.startswith("."):
        return "must not start with '.'"
    if len(label.encode("utf-8")) > 200:
        return "is longer than 200 bytes"
    return None


def _invalid(name: str, why: list[str], errors: list[dict[str, object]]) -> DatasetRejected:
    return DatasetRejected(
        f"{name} is not a valid manifest: {'; '.join(why)}. Its first row is path,label[,split]; "
        "each later row names one image file (relative to the CSV) and its class",
        code="manifest_invalid",
        details={"manifest": name, "errors": errors[:_ERRORS_QUOTED], "error_count": len(errors)},
    )
