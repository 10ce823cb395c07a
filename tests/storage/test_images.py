"""app.storage.images: the one image gate shared by ingest and prediction uploads."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from PIL import Image

from app.storage.images import ImageRejected, check_image_file, open_image

from ._build import digit_image, digit_jpeg, digit_png, png_header_only, truncated_png

DEFAULT_MAX = 89_478_485


@pytest.mark.parametrize("data", [digit_png(1), digit_jpeg(2)], ids=["png", "jpeg"])
def test_accepts_real_images_and_returns_them_decoded(data: bytes) -> None:
    img = open_image(data, DEFAULT_MAX)
    assert img.format in {"PNG", "JPEG"}
    assert img.size in {(8, 8), (16, 16)}
    assert img.getpixel((0, 0)) is not None  # loaded: no file access needed any more


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"just some text, not pixels\n" * 10, "not an image in an accepted format"),
        (truncated_png(), "truncated or corrupt"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_rejects_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected) as exc:
        open_image(data, DEFAULT_MAX)
    assert reason in exc.value.message
    assert exc.value.code == "image_invalid"
    assert exc.value.status_code == 422
    assert exc.value.details["reason"] == exc.value.message


def test_format_outside_the_allow_list_is_rejected_even_if_pillow_reads_it() -> None:
    buf = io.BytesIO()
    digit_image(3).save(buf, format="PPM")  # Pillow reads PPM, we do not accept it
    with pytest.raises(ImageRejected, match="accepted format"):
        open_image(buf.getvalue(), DEFAULT_MAX)


def test_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(ImageRejected, match=r"64x64 = 4096 pixels, over the limit of 1000"):
        open_image(digit_png(0, size=64), max_pixels=1000)


@pytest.mark.parametrize(
    "side",
    [
        20_000,  # 400 Mpx: over 2x Pillow's limit, Pillow raises DecompressionBombError
        10_000,  # 100 Mpx: between 1x and 2x, Pillow only warns; we must still refuse
    ],
)
def test_header_claiming_a_huge_size_is_rejected_without_decoding(side: int) -> None:
    data = png_header_only(side, side)  # ~60 bytes; decoding it would need 100s of MB
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageRejected, match="too large to decode safely"):
            # A caller limit above Pillow's shows Pillow's own guard counts as a rejection.
            open_image(data, max_pixels=10**12)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert warnings.filters == filters_before
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX  # global Pillow state untouched


def test_check_image_file_returns_reason_or_none(tmp_path: Path) -> None:
    good, bad, empty = tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "empty.png"
    good.write_bytes(digit_png(4))
    bad.write_bytes(truncated_png(4))
    empty.write_bytes(b"")
    assert check_image_file(good, DEFAULT_MAX) is None
    assert "truncated" in (check_image_file(bad, DEFAULT_MAX) or "")
    assert "empty" in (check_image_file(empty, DEFAULT_MAX) or "")
    assert "pixels" in (check_image_file(good, max_pixels=10) or "")


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_allowed_formats(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / f"img.{fmt.lower()}"
    digit_image(5, size=16).save(path, format=fmt)
    assert check_image_file(path, DEFAULT_MAX) is None
    with open(path, "rb") as fp:  # file objects work too (the serving path)
        assert open_image(fp, DEFAULT_MAX).format == fmt


def test_concurrent_use_leaves_warning_filters_as_they_were() -> None:
    from concurrent.futures import ThreadPoolExecutor

    bomb, good = png_header_only(10_000, 10_000), digit_png(6)
    filters_before = list(warnings.filters)

    def one(i: int) -> bool:
        try:
            open_image(bomb if i % 2 else good, max_pixels=10**12)
        except ImageRejected:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert results == [i % 2 == 0 for i in range(200)]
    assert warnings.filters == filters_before
