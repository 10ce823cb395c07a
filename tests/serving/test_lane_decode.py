"""Where a request's images are opened and decoded (app.serving.predict): a small request on the
inference lane that takes it, anything else on a worker thread, never on the event loop; and a
bad image decoded on a lane fails its own request, not the pass it shares."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from app.serving import decode as serving
from tests.api.conftest import error_code
from tests.serving.test_batching import batcher_of, post, probabilities, send_gated


@pytest.fixture
def opened_on(monkeypatch) -> list[str]:
    """The names of the threads that open uploads."""
    seen: list[str] = []
    original = serving.open_upload

    def recorded(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(serving, "open_upload", recorded)
    return seen


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def off_the_loop(names: list[str]) -> bool:
    loop_threads = {t.name for t in threading.enumerate() if "portal" in t.name.lower()}
    return not set(names) & ({"MainThread"} | loop_threads)


def test_a_small_request_is_decoded_on_the_inference_lane(client, model_id, photos, opened_on):
    assert sum(map(len, photos[:2])) <= serving.LANE_DECODE_BYTES
    assert post(client, model_id, photos[:2]).status_code == 200
    assert opened_on == [f"inference-{model_id}#0"] * 2  # torch: one lane
    assert off_the_loop(opened_on)


def test_a_large_request_is_decoded_on_a_worker_thread(client, model_id, opened_on):
    # Noise does not compress: over LANE_DECODE_BYTES on the wire.
    noisy = png(np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8))
    assert len(noisy) > serving.LANE_DECODE_BYTES
    assert post(client, model_id, [noisy]).status_code == 200
    assert len(opened_on) == 1 and opened_on[0].startswith("AnyIO worker thread"), opened_on


def test_few_bytes_of_many_pixels_go_back_to_a_worker_thread_and_the_budget(
    client, model_id, photos, opened_on
):
    """A flat 1,500 x 1,500 PNG is a few KB but 2.25 M pixels at full size: the lane opens it,
    sees the size and hands the request to a worker thread, where the decode reserves its pixels
    from the process-wide budget."""
    flat = png(np.full((1500, 1500, 3), 128, dtype=np.uint8))
    assert len(flat) <= serving.LANE_DECODE_BYTES
    assert serving.LANE_DECODE_PIXELS < 1500 * 1500
    budget = client.app.state.model_cache.decode_budget
    r = post(client, model_id, [flat])
    assert r.status_code == 200, r.text
    assert opened_on[0] == f"inference-{model_id}#0"
    assert len(opened_on) == 2 and opened_on[1].startswith("AnyIO worker thread"), opened_on
    assert budget.peak >= 1500 * 1500
    # The same image decoded on a worker thread from the start answers the same.
    assert probabilities(r) == probabilities(post(client, model_id, [flat]))


def test_a_bad_image_fails_its_own_request_not_the_pass(client, settings, model_id, photos):
    """Three requests queue behind a running pass; the middle one is not an image. Its
    decode fails on the lane that took all three: it gets its 422, the others their answers,
    from one pass of two images."""
    _, responses, batcher, before = send_gated(
        client, settings, model_id, [[photos[0]], [b"not an image"], [photos[1]]]
    )
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert error_code(responses[1]) == "image_invalid"
    assert responses[1].json()["error"]["details"]["filename"] == "0.img"
    assert batcher.stats.batches == before + 2  # the gated pass, then one for the queued
    assert list(batcher.stats.sizes)[-1] == 2
    alone = [probabilities(post(client, model_id, [p]))[0] for p in photos[:2]]
    for got, want in zip([probabilities(r)[0] for r in responses[::2]], alone, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert batcher_of(client, settings, model_id).queued_images == 0


def _progressive_bomb(side: int) -> bytes:
    """A progressive JPEG of a few hundred bytes declaring side x side pixels: one AC-only scan
    per channel whose end-of-band runs cover every block (libjpeg still keeps coefficients for
    all of them, whatever the scale it decodes to)."""
    import struct

    def segment(marker: int, body: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body

    channels = 3
    out = b"\xff\xd8" + segment(0xDB, b"\x00" + bytes([1] * 64))
    components = b"".join(bytes([i + 1, 0x11, 0]) for i in range(channels))
    frame = bytes([8]) + struct.pack(">HH", side, side) + bytes([channels]) + components
    out += segment(0xC2, frame)
    out += segment(0xC4, bytes([0x10]) + bytes([1] + [0] * 15) + bytes([0xE0]))
    blocks = (side // 8) ** 2
    bits = ("0" + "1" * 14) * -(-blocks // 32767)
    bits += "1" * (-len(bits) % 8)
    data = bytearray()
    for i in range(0, len(bits), 8):
        data.append(int(bits[i : i + 8], 2))
        if data[-1] == 0xFF:
            data.append(0)
    for c in range(channels):
        out += segment(0xDA, bytes([1, c + 1, 0x00, 1, 63, 0x00])) + bytes(data)
    return out + b"\xff\xd9"


def test_a_progressive_jpeg_counts_its_declared_pixels_not_its_scaled_ones():
    """libjpeg holds a progressive JPEG's coefficients at full size even when it decodes at 1/8
    (the review's 417-byte file declaring 8,192 x 8,192 took 400 MB in a lane): its decode
    costs twice its declared pixels, so it is no lane's and it reserves the whole budget."""
    from app.engine.inference import create_preprocessor
    from tests.serving.conftest import PREPROCESSING

    pre = create_preprocessor(PREPROCESSING)
    bomb = _progressive_bomb(8192)
    assert len(bomb) < 1024
    img, declared = serving.open_upload(bomb, pre, 10**9)
    assert declared == 8192 * 8192 and img.size[0] < 8192  # drafted
    assert serving.full_size_pixels(img) == 2 * declared
    img.close()
    with pytest.raises(serving.TooLargeForLane):
        serving.open_and_decode_small([("bomb.jpg", bomb)], pre, 10**9)
    # A baseline JPEG of the same size costs its drafted size only.
    buf = io.BytesIO()
    Image.new("RGB", (2048, 2048), (10, 20, 30)).save(buf, format="JPEG")
    img, declared = serving.open_upload(buf.getvalue(), pre, 10**9)
    assert serving.full_size_pixels(img) == img.width * img.height < declared
    img.close()
    buf = io.BytesIO()
    Image.new("RGB", (2048, 2048), (10, 20, 30)).save(buf, format="JPEG", progressive=True)
    img, declared = serving.open_upload(buf.getvalue(), pre, 10**9)
    assert serving.full_size_pixels(img) == 2 * declared
    img.close()


def _corrupt_exif_webp() -> bytes:
    """A WebP whose EXIF block does not start with a TIFF header: Pillow opens and decodes it,
    then raises SyntaxError when the upright step reads the orientation."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(buf, format="WEBP", exif=exif)
    data = buf.getvalue()
    assert data.count(b"MM\x00*") + data.count(b"II*\x00") == 1
    return data.replace(b"MM\x00*", b"1M\x00*").replace(b"II*\x00", b"1I*\x00")


def test_an_image_with_corrupt_metadata_is_a_422_with_its_name(client, model_id):
    bad = _corrupt_exif_webp()
    r = post(client, model_id, [png(np.zeros((8, 8, 3), np.uint8)), bad])
    assert r.status_code == 422, r.text
    assert error_code(r) == "image_invalid"
    assert r.json()["error"]["details"]["filename"] == "1.img"
