"""The parts of resumable uploads on disk: ``<data_dir>/uploads/<upload id>/``.

    part-000001-<sha256>     a stored, verified part (1-based number, its own sha256 in the name)
    .part-000001-<random>    a part being received; renamed into place once its size and
                             checksum are right, removed otherwise

A part is stored whole or not at all, so after a dropped connection the folder tells exactly
which parts the client still has to send. Sending a part again replaces it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio

from app.errors import InvalidInput

_PART = re.compile(r"part-(\d{6})-([0-9a-f]{64})")
CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredPart:
    number: int
    size: int
    sha256: str


def stored_parts(folder: Path) -> dict[int, StoredPart]:
    out: dict[int, StoredPart] = {}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return out
    for name in names:
        if match := _PART.fullmatch(name):
            number = int(match.group(1))
            size = (folder / name).stat().st_size
            out[number] = StoredPart(number, size, match.group(2))
    return out


async def receive_part(
    folder: Path,
    number: int,
    body: AsyncIterator[bytes],
    *,
    expected_size: int,
    sha256: str | None,
    md5_b64: str | None,
) -> StoredPart:
    """Stream a part to disk, check its size and checksum(s), then store it atomically.

    The body's chunks (64 KiB from uvicorn) are gathered to CHUNK and each CHUNK is hashed and
    written on a worker thread, so an 8 MiB part holds the event loop for eight hand-offs rather
    than 30 ms of hashing and writes. FileNotFoundError: the folder was removed meanwhile (the
    upload was swept or aborted)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".part-{number:06d}-{secrets.token_hex(8)}"
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0

    def write(out: BinaryIO, data: bytes) -> None:
        out.write(data)
        sha.update(data)
        md5.update(data)

    try:
        with open(tmp, "xb") as out:
            pending = bytearray()
            async for chunk in body:
                size += len(chunk)
                if size > expected_size:
                    raise _size_mismatch(number, expected_size, f"more than {expected_size}")
                pending += chunk
                if len(pending) >= CHUNK:
                    await anyio.to_thread.run_sync(write, out, bytes(pending))
                    pending.clear()
            await anyio.to_thread.run_sync(write, out, bytes(pending))
        if size != expected_size:
            raise _size_mismatch(number, expected_size, str(size))
        digest = sha.hexdigest()
        if sha256 is not None and sha256.lower() != digest:
            raise _mismatch(number, "Content-SHA256", sha256, digest)
        if md5_b64 is not None and md5_b64 != base64.b64encode(md5.digest()).decode():
            raise _mismatch(number, "Content-MD5", md5_b64, base64.b64encode(md5.digest()).decode())
        final = folder / f"part-{number:06d}-{digest}"
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    for old in folder.glob(f"part-{number:06d}-*"):
        if old != final:
            old.unlink(missing_ok=True)  # a part sent again with other bytes replaces the first
    return StoredPart(number, size, digest)


def assemble(folder: Path, count: int, dest: Path) -> None:
    """Concatenate parts 1..count into ``dest`` (the caller checked they are all there)."""
    parts = stored_parts(folder)
    with open(dest, "xb") as out:
        for number in range(1, count + 1):
            with open(folder / f"part-{number:06d}-{parts[number].sha256}", "rb") as src:
                shutil.copyfileobj(src, out, CHUNK)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _size_mismatch(number: int, expected: int, got: str) -> InvalidInput:
    return InvalidInput(
        f"part {number} must be {expected} bytes (part_size, or the rest of the upload for the "
        f"last part) but {got} arrived; send it again",
        code="part_size_mismatch",
        details={"part": number, "expected_bytes": expected},
    )


def _mismatch(number: int, header: str, sent: str, actual: str) -> InvalidInput:
    return InvalidInput(
        f"part {number} does not match its {header} header; it was damaged in transit (or the "
        "header is of other bytes): send it again",
        code="part_checksum_mismatch",
        details={"part": number, "header": header, "sent": sent, "actual": actual},
    )
