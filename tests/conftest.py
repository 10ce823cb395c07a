"""Fixtures shared by every test layer: real images from scikit-learn's digits, as archives."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.db.migrate import upgrade
from app.settings import Settings
from tests.services import postgres_url, redis_url  # noqa: F401  (fixtures for every layer)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo a test's logging set-up (configure_logging, or `transferlab` run in-process): its
    handlers write to that test's captured stderr, which is closed once the test ends, and every
    later log line would print "--- Logging error ---" instead."""
    root, alembic = logging.getLogger(), logging.getLogger("alembic")
    handlers, level, alembic_level = root.handlers[:], root.level, alembic.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    alembic.setLevel(alembic_level)  # `keys` quiets it


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A real data folder and SQLite database at the latest schema, for one test."""
    s = Settings(data_dir=tmp_path / "data", loader_workers=0, progress_interval_s=0.0)
    s.layout.ensure()
    upgrade(s.resolved_database_url)
    return s


def digit_png(image: np.ndarray, size: int = 32) -> bytes:
    """One 8x8 digits image (values 0..16) as a greyscale PNG, upscaled to size x size."""
    pixels = (image * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


@pytest.fixture(scope="session")
def digits_zip(digits, tmp_path_factory) -> Callable[..., Path]:
    """Build a zip of class folders from real digits: make(classes=(0, 1, 2), per_class=12)."""
    images, targets = digits
    root = tmp_path_factory.mktemp("archives")

    def make(
        classes: tuple[int, ...] = (0, 1, 2),
        per_class: int = 12,
        extra: dict[str, bytes] | None = None,
        name: str = "digits.zip",
    ) -> Path:
        path = root / name
        with zipfile.ZipFile(path, "w") as zf:
            for c in classes:
                for i, idx in enumerate(np.flatnonzero(targets == c)[:per_class]):
                    zf.writestr(f"digit_{c}/{i:03d}.png", digit_png(images[idx]))
            for member, data in (extra or {}).items():
                zf.writestr(member, data)
        return path

    return make


@pytest.fixture(scope="session")
def unlabeled_zip(digits, tmp_path_factory) -> Callable[..., Path]:
    """A zip of digit images (inverted: another domain than digits_zip's) in nested folders whose
    names mean nothing, and one file that is not an image: make(count=12, offset=500)."""
    images, _ = digits
    root = tmp_path_factory.mktemp("unlabeled")

    def make(count: int = 12, name: str = "target.zip", offset: int = 500) -> Path:
        path = root / name
        folders = ("", "cam1/", "cam1/2024/06/", "deep/a/b/c/")
        with zipfile.ZipFile(path, "w") as zf:
            for i in range(count):
                zf.writestr(f"{folders[i % 4]}{i:03d}.png", digit_png(16 - images[offset + i]))
            zf.writestr("cam1/readme.txt", b"not an image")
        return path

    return make
