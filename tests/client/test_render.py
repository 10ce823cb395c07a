"""The CLI's rendering of a dataset's report (the e2e CLI test runs it against a real server)."""

from __future__ import annotations

import copy
from typing import Any

from rich.console import Console

from app.client import render


def report() -> dict[str, Any]:
    """A report as POST /v1/datasets answers it: one near copy across train/val (leakage), one
    exact copy within a class."""
    member = lambda path: {"path": path, "split": path.split("/")[0], "class": path.split("/")[1]}  # noqa: E731
    within = [[member("train/a/0-again.png"), member("train/a/0.png")]]
    across = [[member("train/b/1.png"), member("val/b/from-train.png")]]
    counts = {"images": 2, "redundant": 1, "within_class": 1, "across_classes": 0}
    return {
        "classes": ["a", "b"],
        "splits": {"train": {"a": 5, "b": 4}, "val": {"a": 1, "b": 1}},
        "rejected": [],
        "duplicates": {
            "hash": "pHash 256 bit",
            "max_distance": 20,
            "exact": {**counts, "groups": 1, "across_splits": 0,
                      "examples": {"within_class": within, "across_classes": [],
                                   "across_splits": []}},
            "near": {**counts, "groups": 2, "images": 4, "redundant": 2, "across_splits": 1,
                     "examples": {"within_class": within, "across_classes": [],
                                  "across_splits": across}},
        },
        "leakage": {"val_images": 1, "val_total": 2, "fraction": 0.5, "exact": 0,
                    "examples": [{"val": "val/b/from-train.png", "train": ["train/b/1.png"]}]},
        "dedupe": {"mode": "none", "removed": 0, "examples": []},
        "statistics": {
            "sizes": {"shorter_side_histogram": {"<32": 2, "32-63": 9},
                      "most_common": [{"size": "40x40", "count": 9}],
                      "width": {"min": 28, "median": 40, "max": 60},
                      "height": {"min": 28, "median": 40, "max": 60}},
            "modes": {"L": 10, "RGB": 1},
            "class_balance": {"train": {"largest": {"class": "a", "images": 5},
                                        "smallest": {"class": "b", "images": 4},
                                        "imbalance_ratio": 1.25}},
        },
        "warnings": [{"code": "val_leakage", "count": 1, "examples": ["val/b/from-train.png"],
                      "message": "1 of 2 validation image(s) (50.0%) have a copy in train"}],
    }  # fmt: skip


def shown(rep: dict[str, Any]) -> str:
    console = Console(record=True, width=140, highlight=False)
    dataset = {"id": "d1", "name": "leaky", "num_images": 11, "num_classes": 2, "format": "zip"}
    render.dataset(console, {**dataset, "size_bytes": 7180, "report": rep})
    return console.export_text()


def test_the_report_shows_duplicates_leakage_statistics_and_warnings():
    text = shown(report())
    lines = text.splitlines()
    near = next(line for line in lines if line.strip().startswith("near"))
    assert near.split() == ["near", "2", "4", "2", "1", "0", "1"]
    assert "example duplicate groups" in text and "across splits" in text
    assert "leakage: 1 of 2 validation images (50.0%) have a copy in train (0 exact)" in text
    assert any("val/b/from-train.png" in line and "train/b/1.png" in line for line in lines)
    assert "shorter side" in text and "colour modes" in text and "1.25x" in text
    bars = {line.split()[0]: line.count("█") for line in lines if "█" in line}
    assert bars == {"<32": 7, "32-63": 30, "L": 30, "RGB": 3}  # scaled to the largest bin
    assert "1 warning(s)" in text and "val_leakage: 1 of 2 validation" in text
    assert text.index("warning(s)") > text.index("class balance")  # last: what the eye lands on


def test_a_clean_report_says_so_and_an_old_one_says_why_it_is_short():
    clean = copy.deepcopy(report())
    clean["leakage"] = {"val_images": 0, "val_total": 2, "fraction": 0.0, "exact": 0,
                        "examples": []}  # fmt: skip
    clean["warnings"] = []
    text = shown(clean)
    assert "none of the 2 validation images has a copy in train" in text
    assert "no warnings" in text
    old = {k: v for k, v in report().items() if k in ("classes", "splits", "rejected")}
    text = shown(old)
    assert "images per class" in text and "uploaded before the quality report" in text
    assert "redundant" not in text and "class balance" not in text


def test_user_text_is_not_read_as_markup():
    rep = report()
    rep["leakage"]["examples"] = [{"val": "val/[b]/x.png", "train": ["train/[b]/y.png"]}]
    rep["warnings"][0]["examples"] = ["val/[b]/x.png"]
    text = shown(rep)
    assert "val/[b]/x.png" in text and "train/[b]/y.png" in text
