"""Decide whether bytes are an image we are willing to train on or predict from.

Used twice: by dataset ingest for every file of an uploaded archive, and by the serving code for
prediction uploads. Both need the same answers, so both call ``open_image`` (raising) or
``check_image_file`` (returning a reason).

The order of checks is the point:
1. Pillow opens only the allow-listed formats. ``Image.open`` tries every registered plugin
   otherwise, and some of them hand the bytes to external programs (EPS runs Ghostscript).
2. width*height is compared with the limit from the header, before any pixel is decoded.
3. ``load()`` decodes fully, which is what catches truncated and corrupt files.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from app.errors import ServiceError

# MPO is what Pillow calls a JPEG that carries extra frames (most phone cameras write these);
# it is a JPEG for every purpose here, and refusing it would refuse ordinary photos.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF"})
_OPEN_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# warnings.catch_warnings() swaps the process-wide filter list (Python < 3.14 has no per-thread
# filters), so two threads inside it at once can leave the "error" filter installed for everyone
# after both exit. Serialising our own uses keeps the global state exactly as we found it.
# NOTE held while a header is parsed (and while a GIF decodes, see load_checked), not while
# other formats decode: a 12-megapixel JPEG takes ~50 ms to decode.
_WARNINGS_LOCK = threading.Lock()


class ImageRejected(ServiceError):
    status_code = 422
    code = "image_invalid"


def open_image(source: bytes | str | Path | BinaryIO, max_pixels: int) -> Image.Image:
    """Open, size-check and fully decode an image; raise ``ImageRejected`` with the reason.

    The returned image is loaded: its pixels are in memory and it no longer reads ``source``
    (a path is opened and closed here). Only its first frame is decoded.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fp:
            return _open_loaded(fp, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_loaded(io.BytesIO(source), max_pixels)
    return _open_loaded(source, max_pixels)


def _open_loaded(fp: BinaryIO | io.BytesIO, max_pixels: int) -> Image.Image:
    img = open_unloaded(fp, max_pixels)
    load_checked(img, max_pixels)
    return img


def open_unloaded(source: bytes | BinaryIO, max_pixels: int) -> Image.Image:
    """Open an image and check its format and size from the header; no pixel is decoded yet.

    Serving uses this to shrink the decode (``Image.draft``) and to reserve memory for it
    before ``load_checked`` decodes. The caller closes the image.
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    if fp.seekable():
        start = fp.tell()
        empty = fp.seek(0, io.SEEK_END) == start
        fp.seek(start)
        if empty:
            raise _rejected("the file is empty (0 bytes)")
    with _WARNINGS_LOCK, warnings.catch_warnings():
        # Pillow only *warns* between its limit and twice its limit; make that a rejection here
        # without touching Image.MAX_IMAGE_PIXELS or the filters other code sees.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp, formats=_OPEN_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _rejected(f"the image is too large to decode safely ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise _rejected(
                "not an image in an accepted format "
                f"({', '.join(sorted(ALLOWED_FORMATS - {'MPO'}))})"
            ) from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            # Pillow's header parsers raise all of these on malformed input.
            raise _rejected(f"the image header is corrupt ({exc})") from exc
    try:
        _check_header(img, max_pixels)
    except ImageRejected:
        img.close()
        raise
    return img


def load_checked(img: Image.Image, max_pixels: int) -> None:
    """Decode the pixels of an image from ``open_unloaded``; closed and rejected on failure.

    NOTE only GIF decodes under the warnings lock: its frames run Pillow's bomb check again
    while they load. Other formats decode in parallel in as many threads as call this (Pillow
    releases the GIL while it decodes); before, every decode of the process was serialised.
    """
    with contextlib.ExitStack() as stack:
        if img.format == "GIF":
            stack.enter_context(_WARNINGS_LOCK)
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img.load()
            # A GIF may grow past its declared screen while its first frame is decoded.
            _check_header(img, max_pixels)
        except ImageRejected:
            img.close()
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            img.close()
            raise _rejected(f"the image is too large to decode safely ({exc})") from exc
        except (OSError, ValueError, SyntaxError, EOFError, MemoryError, TypeError) as exc:
            # TypeError: TIFF decoders on some malformed tags.
            img.close()
            raise _rejected(f"the image is truncated or corrupt ({exc})") from exc


def check_image_file(path: str | Path, max_pixels: int) -> str | None:
    """The reason ``path`` is not an acceptable image, or None when it is."""
    try:
        open_image(path, max_pixels).close()
    except ImageRejected as exc:
        return exc.message
    return None


def _check_header(img: Image.Image, max_pixels: int) -> None:
    if img.format not in ALLOWED_FORMATS:
        raise _rejected(f"image format {img.format} is not accepted")
    width, height = img.size
    if width * height > max_pixels:
        raise _rejected(
            f"the image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}; downscale it"
        )


def _rejected(reason: str) -> ImageRejected:
    return ImageRejected(reason, details={"reason": reason})
