"""Training augmentation of folder images and the deterministic view used for validation.

``--augment`` (training images only):

- ``none``: resize to the model input (the validation view too);
- ``flip``: the same, mirrored left-right with probability 1/2;
- ``crop-flip``: torchvision's ImageNet recipe: a random crop of 8% to 100% of the image's
  area with an aspect ratio in [3/4, 4/3] (ten tries, then the central crop of the nearest
  allowed ratio), resized to the input with bilinear filtering, then the flip. Validation
  resizes the image so that it covers the input divided by 0.875 (the shorter side to 256
  for a 224 input) and takes the central crop.

The random draws of a sample are a function of (seed, epoch, sample index) alone, through
``sample_rng``: the loader sets the epoch (``epoch_key``) around each fetch, so the same
images come out whatever the number of loader workers or processes, and a resumed run sees
what an uninterrupted one saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
from PIL import Image

AUGMENTS = ("none", "flip", "crop-flip")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
EVAL_CROP = 0.875
SEED_MODULUS = 2**63

_EPOCH: ContextVar[tuple[int, int]] = ContextVar("morphcli_augment_epoch", default=(0, 0))


@contextmanager
def epoch_key(seed: int, epoch: int) -> Iterator[None]:
    """Samples fetched inside draw their augmentation for (``seed``, ``epoch``)."""
    token = _EPOCH.set((seed % SEED_MODULUS, epoch))
    try:
        yield
    finally:
        _EPOCH.reset(token)


def sample_rng(index: int) -> np.random.Generator:
    """The random generator of sample ``index`` in the current (seed, epoch)."""
    seed, epoch = _EPOCH.get()
    return np.random.default_rng([seed, epoch, index])


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random-resized-crop box (left, top, right, bottom) of a ``width`` x ``height`` image."""
    area = width * height
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_view(
    image: Image.Image, size: tuple[int, int], augment: str, rng: np.random.Generator
) -> Image.Image:
    """A training sample of ``image`` at ``size`` (H, W) under ``augment``."""
    height, width = size
    if augment == "crop-flip":
        box = crop_box(image.width, image.height, rng)
        image = image.resize((width, height), Image.Resampling.BILINEAR, box=box)
    else:
        image = image.resize((width, height))
    if augment != "none" and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def eval_view(image: Image.Image, size: tuple[int, int], augment: str) -> Image.Image:
    """The deterministic validation view of ``image`` at ``size`` (H, W)."""
    height, width = size
    if augment != "crop-flip":
        return image.resize((width, height))
    scale = max(height / EVAL_CROP / image.height, width / EVAL_CROP / image.width)
    w, h = round(image.width * scale), round(image.height * scale)
    left, top = (w - width) // 2, (h - height) // 2
    resized = image.resize((w, h), Image.Resampling.BILINEAR)
    return resized.crop((left, top, left + width, top + height))
