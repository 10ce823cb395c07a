"""Memory-bounded decoding (issue 9, item 2) and the split preprocessing: a model-sized decode
of large images, a process-wide bound on full-size decodes, and batches that equal timm's eval
transform image by image."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.data import create_eval_transform
from app.engine.inference import create_preprocessor
from app.serving.decode import PixelBudget, decode_upload
from app.storage.images import ImageRejected
from tests.serving.conftest import PREPROCESSING, encode

ROOT = Path(__file__).resolve().parents[2]


def smooth(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    return small.resize((width, height), Image.BILINEAR).convert(mode)


@pytest.mark.parametrize(
    "preprocessing",
    [
        PREPROCESSING,
        {**PREPROCESSING, "crop_mode": "squash", "interpolation": "bilinear"},
        {**PREPROCESSING, "crop_mode": "border", "crop_pct": 1.0},
        {**PREPROCESSING, "input_size": [3, 48, 40], "mean": [0.5] * 3, "std": [0.5] * 3},
    ],
    ids=["center-bicubic", "squash-bilinear", "border", "rectangular"],
)
def test_a_batch_equals_the_eval_transform_image_by_image(preprocessing):
    images = [
        smooth(50, 40),
        smooth(33, 61, "L", 1),
        smooth(64, 64, "RGBA", 2),
        smooth(45, 30, "P", 3),
    ]
    transform = create_eval_transform(preprocessing)
    pre = create_preprocessor(preprocessing)
    expected = torch.stack([transform(img) for img in images])
    got = pre.batch([pre.pixels(img) for img in images])
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "preprocessing",
    [
        PREPROCESSING,
        {**PREPROCESSING, "crop_mode": "squash", "interpolation": "bilinear"},
        {**PREPROCESSING, "input_size": [3, 64, 64], "crop_pct": 0.95},
        {**PREPROCESSING, "input_size": [3, 112, 112], "crop_pct": 1.0},
        {**PREPROCESSING, "input_size": [3, 48, 40], "crop_mode": "squash"},
        {**PREPROCESSING, "interpolation": "nearest"},
    ],
    ids=["center-bicubic", "squash-bilinear", "64-crop-0.95", "112-no-crop", "squash-48x40",
         "nearest"],
)  # fmt: skip
def test_the_plain_pillow_steps_give_the_pixels_of_the_torchvision_steps(preprocessing):
    """The Pillow fast path (``app.pixels.ResizeCrop``) against the Compose it replaces, pixel
    for pixel: landscape, portrait, square, already at the resize size, smaller than the crop
    (padded), and every mode ToRGB converts."""
    from torchvision import transforms

    from app.pixels import ResizeCrop

    pre = create_preprocessor(preprocessing)
    assert isinstance(pre.pil_steps, ResizeCrop)
    steps = [s for s in create_eval_transform(preprocessing).transforms]
    reference = transforms.Compose([steps[0], *steps[1].transforms[:-2]])  # up to ToTensor
    sizes = [(28, 28), (50, 40), (33, 61), (37, 37), (36, 37), (113, 200), (640, 480), (9, 7)]
    for i, (width, height) in enumerate(sizes):
        for mode in ("RGB", "L", "RGBA", "P"):
            img = smooth(width, height, mode, seed=i)
            want = np.asarray(reference(img))
            got = pre.pixels(img)
            assert got.shape == want.shape, (width, height, mode)
            assert np.array_equal(got, want), (width, height, mode)


def test_other_steps_keep_the_torchvision_compose():
    from app.pixels import ResizeCrop

    for preprocessing in (
        {**PREPROCESSING, "crop_mode": "border", "crop_pct": 1.0},  # ResizeKeepRatio + pad
        {**PREPROCESSING, "input_size": [3, 48, 40]},  # ResizeKeepRatio
    ):
        pre = create_preprocessor(preprocessing)
        assert not isinstance(pre.pil_steps, ResizeCrop)


def test_a_large_jpeg_is_decoded_near_the_model_size():
    """A 6,000 x 4,000 JPEG decodes at 1/8 scale (libjpeg's DCT scaling): what the budget
    reserves is the decoded size, 64 times less than the header's."""
    pre = create_preprocessor(PREPROCESSING)  # 32 px, resize target 37, decodes >= 74 a side
    data = encode(np.asarray(smooth(6000, 4000)), "JPEG", quality=90)
    budget = PixelBudget(10**9)
    pixels = decode_upload(data, pre, max_pixels=10**8, budget=budget)
    assert pixels.shape == (32, 32, 3)
    assert budget.peak == 750 * 500
    # And the model sees about what the full decode gives (the same smooth picture).
    full = create_eval_transform(PREPROCESSING)(Image.open(io.BytesIO(data)))
    got = pre.batch([pixels])[0]
    assert (got - full).abs().mean() < 0.02


def test_other_formats_are_reduced_after_decoding_and_keep_their_orientation():
    pre = create_preprocessor(PREPROCESSING)
    img = smooth(1200, 300)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the upright image is 300 x 1200
    data = encode(np.asarray(img), "PNG", exif=exif.tobytes())
    reduced = decode_upload(data, pre, max_pixels=10**8)
    unreduced = pre.pixels(Image.open(io.BytesIO(data)))
    assert reduced.shape == unreduced.shape == (32, 32, 3)
    # Box-resizing first changes the pixels a little, not the picture.
    assert np.abs(reduced.astype(int) - unreduced.astype(int)).mean() < 1.5


def test_the_budget_bounds_full_size_decodes_across_threads():
    pre = create_preprocessor(PREPROCESSING)
    data = encode(np.asarray(smooth(2000, 1500, "L")), "PNG")
    budget = PixelBudget(2000 * 1500)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: decode_upload(data, pre, 10**8, budget), range(6)))
    assert budget.peak == 2000 * 1500  # one at a time: each needs the whole budget
    assert all(np.array_equal(r, results[0]) for r in results)
    # An image larger than the whole budget still decodes (alone).
    assert decode_upload(data, pre, 10**8, PixelBudget(1000)).shape == (32, 32, 3)


def test_the_pixel_limit_still_refuses_before_decoding():
    pre = create_preprocessor(PREPROCESSING)
    data = encode(np.asarray(smooth(3000, 2000, "L")), "PNG")
    with pytest.raises(ImageRejected, match="over the limit"):
        decode_upload(data, pre, max_pixels=5_000_000)


LARGE_FLOOD = textwrap.dedent(
    """
    import io, json, resource, sys, threading
    import numpy as np
    from PIL import Image
    from fastapi.testclient import TestClient
    from app.db.migrate import upgrade
    from app.main import create_app
    from app.settings import Settings
    from tests.api.conftest import bearer, make_key
    from tests.serving.conftest import register_model

    settings = Settings(data_dir=sys.argv[1], decode_budget_pixels=int(sys.argv[2]))
    settings.layout.ensure()
    upgrade(settings.resolved_database_url)
    model_id = register_model(settings)
    buf = io.BytesIO()
    Image.new("L", (8000, 8000), 90).save(buf, format="PNG")  # 64 M pixels, 80 KB
    large = buf.getvalue()
    small = io.BytesIO()
    Image.new("RGB", (40, 40), (9, 80, 200)).save(small, format="PNG")
    url = f"/v1/models/{model_id}/predict"
    with TestClient(create_app(settings), headers=bearer(make_key(settings, ["predict"]))) as c:
        assert c.post(url, files=[("files", ("s.png", small.getvalue()))]).status_code == 200
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        codes = []
        def send():
            codes.append(c.post(url, files=[("files", ("l.png", large))]).status_code)
        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = c.app.state.model_cache.decode_budget.peak
    print(json.dumps({"codes": codes, "growth_mib": (after - before) / 1024, "peak": peak}))
    """
)


def test_a_flood_of_huge_images_stays_within_the_decode_budget(tmp_path):
    """Eight concurrent requests, each with an 8,000 x 8,000 PNG (64 M pixels, 64 MiB decoded as
    greyscale, 80 KB sent). With the budget at one such image they decode one at a time: the
    process's peak memory grows by about one decode, not eight (~512 MiB)."""
    out = subprocess.run(
        [sys.executable, "-c", LARGE_FLOOD, str(tmp_path / "data"), str(64_000_000)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [200] * 8
    assert result["peak"] == 64_000_000
    assert result["growth_mib"] < 200, result


def test_the_pillow_crop_pads_as_torchvision_does():
    """A crop larger than the resized image (a crop_pct above 1) pads with black, centred the
    way torchvision's center_crop pads, odd margins included."""
    from PIL import Image as PILImage
    from torchvision.transforms import functional as TF

    from app.pixels import ResizeCrop

    for size, crop in (([20], (32, 32)), ([21], (30, 25)), ([16, 24], (20, 31))):
        steps = ResizeCrop(size, PILImage.Resampling.BILINEAR, crop)
        img = smooth(45, 37, "RGB", seed=len(size))
        resized = img.resize(
            (size[-1], size[0]) if len(size) == 2 else (int(size[0] * 45 / 37), size[0]),
            PILImage.Resampling.BILINEAR,
        )
        want = np.asarray(TF.center_crop(resized, list(crop)))
        got = np.asarray(steps(img))
        assert got.shape == want.shape == (crop[0], crop[1], 3)
        assert np.array_equal(got, want)
