"""The PIL half of a model's evaluation preprocessing, without torch.

Upright RGB (``ToRGB``), then resize and centre crop (``ResizeCrop``): what timm's eval transform
does before ToTensor, as plain Pillow calls. The engine builds its transforms from these, and a
served model's lane processes (app.serving.lane) run them without importing torch: a process
that imports torch, torchvision and timm holds about 930 MB here, one with numpy, Pillow and
onnxruntime 52 MB. An import-linter contract keeps this module free of torch.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps

_EXIF_ORIENTATION = 0x0112


def upright(img: Image.Image) -> Image.Image:
    """``img`` rotated as its EXIF says (phone photos), before any crop."""
    # Check the tag first: exif_transpose copies the whole image even when nothing rotates.
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return img


class ToRGB:
    """Upright 3-channel PIL image: greyscale (MNIST, digits), palette and RGBA inputs all work,
    and phone photos are rotated as their EXIF says before any crop."""

    def __call__(self, img: Image.Image) -> Image.Image:
        img = upright(img)
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


class ResizeCrop:
    """ToRGB, Resize and CenterCrop (timm's eval transform before ToTensor) as plain Pillow
    calls, with torchvision's arithmetic for the sizes: the same pixels without the modules'
    call machinery, which cost as much as the resize itself on small images (a 28 x 28 PNG at
    64 px: 141 us through the Compose, about 80 us here). tests/serving/test_decode.py checks
    the pixels against the Compose over many sizes.

    ``size``: one side (the shorter one goes to it) or (height, width); ``resample``: a PIL
    filter; ``crop``: (height, width). ``spec()`` and ``from_spec()`` carry it to another
    process as plain data.
    """

    def __init__(self, size: list[int], resample: int, crop: tuple[int, int]) -> None:
        self.size, self.resample, self.crop = list(size), int(resample), crop

    def spec(self) -> dict[str, Any]:
        return {"size": self.size, "resample": self.resample, "crop": list(self.crop)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ResizeCrop:
        return cls(spec["size"], spec["resample"], (int(spec["crop"][0]), int(spec["crop"][1])))

    def __call__(self, img: Image.Image) -> Image.Image:
        img = upright(img)
        # Greyscale is resized and cropped first and made RGB last: Pillow resamples each
        # channel alike, so the pixels are the same (tested) for a third of the resampling
        # (a 28 x 28 greyscale PNG to 64 x 64 RGB: 0.114 against 0.140 ms to open and preprocess).
        grey = img.mode == "L"
        if not grey and img.mode != "RGB":
            img = img.convert("RGB")
        width, height = img.size
        if len(self.size) == 2:
            new_height, new_width = self.size
        else:  # the shorter side to size, the longer in proportion (rounded down)
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.size[0], int(self.size[0] * long / short)
            new_width, new_height = (
                (new_short, new_long) if width <= height else (new_long, new_short)
            )
        if (new_width, new_height) != (width, height):
            img = img.resize((new_width, new_height), self.resample)
        crop_height, crop_width = self.crop
        if crop_width > img.width or crop_height > img.height:
            # Pads with black, as torchvision's center_crop does (not for timm's eval sizes).
            left = (crop_width - img.width) // 2 if crop_width > img.width else 0
            top = (crop_height - img.height) // 2 if crop_height > img.height else 0
            padded = Image.new(img.mode, (max(crop_width, img.width), max(crop_height, img.height)))
            padded.paste(img, (left, top))
            img = padded
        top = round((img.height - crop_height) / 2.0)
        left = round((img.width - crop_width) / 2.0)
        img = img.crop((left, top, left + crop_width, top + crop_height))
        return img.convert("RGB") if grey else img
