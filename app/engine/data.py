"""Images on disk -> tensors: preprocessing configs, transforms, the dataset, splits, loaders."""

from __future__ import annotations

import itertools
import numbers
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    WeightedRandomSampler,
)
from torchvision import transforms

from app.engine.errors import EngineError
from app.engine.specs import DatasetSplits
from app.pixels import ToRGB

Sample = tuple[str, int]
Transform = Callable[[Image.Image], torch.Tensor]

# Keys of timm's data config that describe eval preprocessing; the card stores exactly these.
PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def resolve_preprocessing(base: Mapping[str, Any], image_size: int | None) -> dict[str, Any]:
    """The eval data config for a job, JSON-safe (lists), with ``image_size`` applied."""
    cfg = {k: base[k] for k in PREPROCESSING_KEYS if k in base}
    if image_size is not None:
        channels = int(cfg.get("input_size", (3,))[0])
        cfg["input_size"] = (channels, image_size, image_size)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _timm_kwargs(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    # The card stores lists (JSON); timm wants tuples for sizes and statistics.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in preprocessing.items()}


def _compose(timm_transform: Callable[[Image.Image], torch.Tensor]) -> Transform:
    return transforms.Compose([ToRGB(), timm_transform])


def create_eval_transform(preprocessing: Mapping[str, Any]) -> Transform:
    """Resize + centre crop + normalise, as timm evaluates (used for validation and predict)."""
    return _compose(create_transform(**_timm_kwargs(preprocessing), is_training=False))


def create_train_transform(
    preprocessing: Mapping[str, Any], augmentation: str = "default"
) -> Transform:
    """The training transform of an ``augmentation`` preset at the job's input size.

    - "default": timm's training transform, RandomResizedCrop(scale=(0.08, 1)) + horizontal flip
      + colour jitter, tuned for ImageNet-sized photos. On tiny images (8x8 digits upscaled) an 8%
      crop keeps only a few source pixels, and flips do not preserve every class (digits).
    - "none": the eval transform (resize + centre crop).
    - "light": RandomResizedCrop(scale=(0.6, 1)) only: no flips, no colour jitter. For digits,
      text and other data where a flip changes the class.
    - "strong": timm's defaults plus RandAugment ("rand-m9-mstd0.5", which replaces the colour
      jitter), the recipe timm trains ImageNet models with.
    """
    kwargs = _timm_kwargs(preprocessing)
    if augmentation == "none":
        return create_eval_transform(preprocessing)
    if augmentation == "light":
        kwargs.update(scale=(0.6, 1.0), hflip=0.0, color_jitter=None)
    elif augmentation == "strong":
        kwargs.update(auto_augment="rand-m9-mstd0.5")
    elif augmentation != "default":
        raise EngineError(
            f"Unknown augmentation {augmentation!r}; use default, none, light or strong."
        )
    return _compose(create_transform(**kwargs, is_training=True))


class ImageReadError(EngineError):
    """An image file that cannot be decoded.

    DataLoader worker processes re-raise a worker's exception as ``type(exc)(text)`` where the
    text is the whole worker traceback. Users should see one sentence, so the original message is
    recovered from the traceback's last line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class ImageDataset(Dataset):
    """(path, label) pairs -> (transformed image, label). Images are decoded on access."""

    def __init__(self, samples: Sequence[Sample], transform: Transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                # ToRGB inside the transform copies the pixels, so the file can close here.
                tensor = self.transform(img)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageReadError(
                f"Image {path!r} could not be read ({type(exc).__name__}: {exc}). "
                "Remove or replace it in the dataset and resubmit the job."
            ) from exc
        return tensor, label


def _is_label(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_splits(data: DatasetSplits) -> None:
    n = len(data.class_names)
    if n < 2:
        raise EngineError(f"A classifier needs at least 2 classes; the dataset has {n}.")
    if len(set(data.class_names)) != n:
        raise EngineError("Class names must be unique.")
    for split_name, samples in (("train", data.train), ("val", data.val)):
        bad = next((s for s in samples if not _is_label(s[1]) or not 0 <= s[1] < n), None)
        if bad is not None:
            raise EngineError(
                f"{split_name} sample {bad[0]!r} has label {bad[1]!r}; labels are class indices "
                f"0..{n - 1}."
            )


def split_train_val(
    data: DatasetSplits, val_fraction: float, seed: int
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """The job's (train, val) samples.

    An explicit ``data.val`` is used as given. Otherwise each class is shuffled (seeded) and
    ``val_fraction`` of it held out, rounded, but at least one image from every class with 2 or
    more images, and never a class's last training image.
    """
    check_splits(data)
    if data.val:
        train, val = tuple(data.train), tuple(data.val)
    else:
        by_class: dict[int, list[Sample]] = defaultdict(list)
        for sample in data.train:
            by_class[sample[1]].append(sample)
        rng = random.Random(seed)
        train_list: list[Sample] = []
        val_list: list[Sample] = []
        for label in sorted(by_class):
            items = by_class[label]
            rng.shuffle(items)
            n_val = 0
            if len(items) >= 2:
                n_val = min(max(1, round(len(items) * val_fraction)), len(items) - 1)
            val_list.extend(items[:n_val])
            train_list.extend(items[n_val:])
        train, val = tuple(train_list), tuple(val_list)
    if not val:
        raise EngineError(
            "There is no validation data: give a validation split, or at least 2 images in some "
            "class so that part of the training data can be held out."
        )
    if len(train) < 2:
        raise EngineError(f"Training needs at least 2 images; the training split has {len(train)}.")
    return train, val


def create_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    device: torch.device,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    persistent_workers: bool = False,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
    batch_sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader set up for ``device``; shuffling is seeded so CPU runs repeat exactly.
    A ``sampler`` (or a ``batch_sampler``, which then sets the batches) comes with the
    ``generator`` that drives it (and seeds the workers).

    ``persistent_workers`` is for loaders iterated every epoch: re-forking workers costs seconds
    per epoch with many workers. One-shot loaders (feature extraction) leave it off so their
    processes end with the pass.
    """
    if generator is None and shuffle:
        generator = torch.Generator().manual_seed(seed)
    if batch_sampler is not None:  # it makes the batches: DataLoader takes none of these then
        batch_size, shuffle, sampler, drop_last = 1, False, None, False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        batch_sampler=batch_sampler,
        generator=generator,
        num_workers=num_workers,
        # Page-locked batches let .to(device, non_blocking=True) overlap the copy with compute.
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def balanced_sample_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-sample weights 1 / (images of its class): every class is drawn equally often."""
    targets = torch.as_tensor(list(labels), dtype=torch.int64)
    counts = torch.bincount(targets)
    return (1.0 / counts.double())[targets]


class ResumableSampler(Sampler[int]):
    """Wraps a sampler so that one epoch can start after its first ``skip`` indices.

    A run resumed mid-epoch restores the generator as it was when the epoch began, so the
    wrapped sampler draws the same order, and the indices already trained on are passed over
    here, before any image is loaded."""

    def __init__(self, sampler: Sampler[int], generator: torch.Generator) -> None:
        self.sampler = sampler
        self.generator = generator  # what draws the wrapped sampler's order (saved with a state)
        self.skip = 0

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        indices = iter(self.sampler)
        for _ in itertools.islice(indices, skip):
            pass
        yield from indices


def create_train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    device: torch.device,
    seed: int,
    num_workers: int,
    sampler: str = "shuffle",
) -> DataLoader:
    """Seeded training batches: shuffled, or class-balanced (``sampler="balanced"``: each epoch
    draws ``len(dataset)`` samples with replacement, every class equally likely).

    A trailing batch of exactly one image is dropped: BatchNorm in train mode cannot normalise a
    single sample after global pooling and raises. Any larger remainder is kept.
    """
    n = len(dataset)  # type: ignore[arg-type]
    drop_last = n % batch_size == 1 and n > 1
    # The sampler's generator draws only the epochs' orders, so its state says exactly where the
    # order is and a resumed run draws the same one. The loader gets a generator of its own for
    # the workers' base seed: persistent workers draw it once, when the first iterator is made,
    # so a shared generator would hold one draw more in a resumed process than in an
    # uninterrupted one at the same epoch, and every later order would differ (with loader
    # workers, a mid-epoch resume then skipped the wrong images). The sampler is the one
    # DataLoader builds for shuffle=True (or the balanced one), wrapped to skip ahead.
    generator = torch.Generator().manual_seed(seed)
    worker_seeds = torch.Generator().manual_seed(seed + 1)
    order: Sampler[int]
    if sampler == "balanced":
        samples = getattr(dataset, "samples", None)
        if samples is None:
            raise EngineError("A balanced sampler needs a dataset of (path, label) samples.")
        order = WeightedRandomSampler(
            balanced_sample_weights([label for _, label in samples]),  # type: ignore[arg-type]
            num_samples=n,
            replacement=True,
            generator=generator,
        )
    else:
        order = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
    return create_loader(
        dataset,
        batch_size,
        device=device,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=True,
        sampler=ResumableSampler(order, generator),
        generator=worker_seeds,
    )


# timm's ImageNet train transform (RandomResizedCrop down to 8% of the area, flips, colour
# jitter) is made for photos of ImageNet's scale; below this side, "auto" picks "light".
AUTO_MIN_SIDE = 128
_AUTO_SAMPLE = 64  # headers read to judge a dataset's image sizes


def resolve_augmentation(
    augmentation: str, samples: Sequence[tuple[str, int]], input_size: Sequence[int]
) -> str:
    """``augmentation`` itself, or for "auto": "default" (timm's policy) when the images' median
    shorter side and the model's input are both at least AUTO_MIN_SIDE, else "light"."""
    if augmentation != "auto":
        return augmentation
    step = max(1, len(samples) // _AUTO_SAMPLE)
    sides = []
    for path, _ in list(samples)[::step][:_AUTO_SAMPLE]:
        try:
            with Image.open(path) as img:  # reads the header only
                sides.append(min(img.size))
        except (OSError, ValueError):  # unreadable: the loader names the file when it meets it
            continue
    median = sorted(sides)[len(sides) // 2] if sides else 0
    fits = median >= AUTO_MIN_SIDE and min(input_size[-2:]) >= AUTO_MIN_SIDE
    return "default" if fits else "light"
