from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """Where a dataset is ingested to; ingest_archive creates it."""
    return tmp_path / "datasets" / "ds1"
