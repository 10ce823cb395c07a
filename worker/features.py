"""Store a feature-extraction job's embeddings as a downloadable artifact."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from app.engine import Embeddings

BUNDLE = "features.zip"


def save_embeddings(emb: Embeddings, dataset_dir: Path, dest: Path, meta: dict) -> None:
    """dest/features.npy (N x D float32), index.csv (row, split, label, class, path), meta.json,
    and all three in features.zip for download. Written under a temporary name, then renamed."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.save(partial / "features.npy", emb.features)
    with (partial / "index.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "split", "label", "class", "path"])
        for row, ((path, label), split) in enumerate(zip(emb.samples, emb.splits, strict=True)):
            rel = Path(path).relative_to(dataset_dir).as_posix()
            writer.writerow([row, split, label, _cell(emb.class_names[label]), _cell(rel)])
    (partial / "meta.json").write_text(
        json.dumps(
            {
                **meta,
                "architecture": emb.architecture,
                "feature_layer": emb.feature_layer,
                "shape": list(emb.features.shape),
                "dtype": "float32",
                "class_names": list(emb.class_names),
                "preprocessing": emb.preprocessing,
            },
            indent=2,
        )
    )
    with zipfile.ZipFile(partial / BUNDLE, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("features.npy", "index.csv", "meta.json"):
            zf.write(partial / name, arcname=name)
    partial.rename(dest)


def _cell(text: str) -> str:
    """Class names and paths come from the uploaded archive: a leading =, +, -, @ (or a tab or
    carriage return) would make a spreadsheet run the cell as a formula (OWASP's CSV injection
    advice: prefix a single quote)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
