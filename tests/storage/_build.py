"""Real archives and real images for the storage tests (no mocks: zipfile, tarfile, Pillow)."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# name -> bytes for a file, None for a directory entry
Entries = dict[str, "bytes | None"]


@lru_cache(maxsize=1)
def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images  # (1797, 8, 8) floats in 0..16


def digit_image(i: int, size: int = 8) -> Image.Image:
    pixels = (_digits()[i] * (255 / 16)).astype(np.uint8)
    img = Image.fromarray(pixels, mode="L")
    return img if size == 8 else img.resize((size, size), Image.Resampling.NEAREST)


def digit_png(i: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    digit_image(i, size).save(buf, format="PNG")
    return buf.getvalue()


def digit_jpeg(i: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    digit_image(i, size).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def truncated_png(i: int = 0) -> bytes:
    """A PNG whose header parses but whose pixel data stops half way."""
    data = digit_png(i, size=32)
    return data[: len(data) // 2]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that *claims* width x height: signature, IHDR, an empty IDAT, IEND (~60 bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def write_zip(path: Path, entries: Entries, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            if data is None:
                zf.writestr(name if name.endswith("/") else name + "/", b"")
            else:
                zf.writestr(name, data)
    return path


def write_tar(path: Path, entries: Entries, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def add_tar_member(path: Path, info: tarfile.TarInfo, data: bytes | None = None) -> None:
    """Append a hand-made member (link, device...) to an uncompressed tar."""
    with tarfile.open(path, "a") as tf:
        if data is not None:
            info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if data is not None else None)


def two_classes(n: int = 3, prefix: str = "") -> Entries:
    """A minimal valid dataset: cats/ and dogs/ with n PNG digits each."""
    entries: Entries = {}
    for k in range(n):
        entries[f"{prefix}cats/{k}.png"] = digit_png(k)
        entries[f"{prefix}dogs/{k}.png"] = digit_png(100 + k)
    return entries
