"""Data for fine-tuning: ``.npz`` arrays, image folders, or a ``module:function`` dataset.

Every source becomes a torch ``Dataset`` whose items are ``x`` or ``(x, y)``: ``x`` a float
tensor of the model input's per-sample shape, ``y`` an integer label (tensor). Sources:

- ``data.npz`` with ``x``, optional ``y``, optional ``x_val`` / ``y_val`` (uncompressed
  arrays are memory-mapped and read a batch at a time, see ``npz``);
- a folder with one subfolder of images per class (class index = sorted folder order),
  read with Pillow, brought to the model input (training images through ``--augment``,
  validation images through the deterministic view, see ``augment``), scaled to [0, 1],
  then ``(v - mean) / std``;
- ``module:function``: a callable returning a torch Dataset (the module is imported with the
  current directory on ``sys.path``).

Without validation data the training set is split: ``VAL_FRACTION`` of it is held out.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from morphcli.errors import MorphError
from morphcli.learn.augment import eval_view, sample_rng, train_view
from morphcli.learn.datacheck import call_dataset, check_npz, read_image
from morphcli.learn.npz import ArrayDataset, read_npz

VAL_FRACTION = 0.1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class DataSplit:
    """Training and validation datasets, and whether their items carry labels."""

    train: Dataset
    val: Dataset
    labelled: bool

    def __str__(self) -> str:
        kind = "labelled" if self.labelled else "unlabelled"
        return f"{len(self.train)} training and {len(self.val)} validation samples ({kind})"


@dataclass(frozen=True)
class ImageOptions:
    """How image folders become tensors: size (H, W), per-channel mean and std, the training
    ``augment`` (``none``, ``flip`` or ``crop-flip``) and whether these are training images
    (``train``: augmented) or validation images (the deterministic view)."""

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    augment: str = "none"
    train: bool = False


class ImageFolder(Dataset):
    """Images in class subfolders, decoded lazily with Pillow."""

    def __init__(self, root: Path, options: ImageOptions) -> None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.items = [
            (path, label)
            for label, name in enumerate(classes)
            for path in sorted((root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        ]
        if not self.items:
            raise MorphError("no images in class subfolders", file=str(root))
        if options.channels not in (1, 3, 4):
            raise MorphError(
                f"images feed 1, 3 or 4 input channels, the model takes {options.channels}"
            )
        if not {len(options.mean), len(options.std)} <= {1, options.channels}:
            raise MorphError(f"--mean and --std take 1 or {options.channels} values")
        self.labels = np.array([label for _, label in self.items], dtype=np.int64)
        self.options = options
        mean = np.asarray(options.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(options.std, np.float32).reshape(-1, 1, 1)
        self._mean, self._std = mean, std

    def __len__(self) -> int:
        return len(self.items)

    def viewed(self, options: ImageOptions) -> ImageFolder:
        """The same images under other options (the validation view of a training folder)."""
        other = copy.copy(self)
        other.options = options
        return other

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.items[index]
        options = self.options
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[options.channels]
        height, width = options.size
        converted = read_image(path, lambda image: image.convert(mode))
        if options.train:
            view = train_view(converted, options.size, options.augment, sample_rng(index))
        else:
            view = eval_view(converted, options.size, options.augment)
        pixels = np.asarray(view, dtype=np.float32)
        array = pixels.reshape(height, width, -1).transpose(2, 0, 1) / 255.0
        array = (array - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(array)), torch.tensor(label)


def _labels(values: np.ndarray, where: str) -> torch.Tensor:
    if not np.issubdtype(values.dtype, np.integer):
        raise MorphError(f"labels must be integers, got {values.dtype}", file=where)
    return torch.from_numpy(values.astype(np.int64))


def _arrays(x: np.ndarray, y: np.ndarray | None, where: str) -> Dataset:
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x) or x.ndim == 0:
        raise MorphError(f"inputs must be an array of real numbers, got {x.dtype}", file=where)
    if y is None:
        return ArrayDataset(x)
    if np.ndim(y) == 0 or len(y) != len(x):
        raise MorphError(f"{len(x)} inputs but {np.size(y)} labels", file=where)
    return ArrayDataset(x, _labels(np.asarray(y), where))


def _npz(path: Path) -> tuple[Dataset, Dataset | None]:
    check_npz(path)
    found = read_npz(path)
    if "x" not in found:
        raise MorphError(f"no array 'x' (has {', '.join(found) or 'none'})", file=str(path))
    train = _arrays(found["x"], found.get("y"), str(path))
    val = None
    if "x_val" in found:
        val = _arrays(found["x_val"], found.get("y_val"), str(path))
    return train, val


def _callable(spec: str) -> Dataset:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return call_dataset(spec)


def read_source(spec: str, images: ImageOptions) -> tuple[Dataset, Dataset | None]:
    """One ``--data`` value as (dataset, validation dataset it carries or None)."""
    path = Path(spec)
    if path.is_dir():
        return ImageFolder(path, images), None
    if path.suffix == ".npz" or path.exists():
        if not path.exists():
            raise MorphError("no such file", file=spec)
        return _npz(path)
    if ":" in spec:
        return _callable(spec), None
    raise MorphError(f"--data {spec}: not an .npz file, an image folder or module:function")


def _first(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
    item = dataset[0]
    if isinstance(item, (tuple, list)):
        return torch.as_tensor(item[0]), torch.as_tensor(item[1]) if len(item) > 1 else None
    return torch.as_tensor(item), None


def check_fits(dataset: Dataset, sample_shape: tuple[int, ...], what: str) -> bool:
    """Raise if samples do not have the model input's per-sample shape; say if labelled."""
    if len(dataset) == 0:
        raise MorphError(f"{what} is empty")
    try:
        x, y = _first(dataset)
    except (TypeError, ValueError, RuntimeError, IndexError) as error:
        raise MorphError(f"{what}: items must be tensors or (x, y) pairs ({error})") from None
    if tuple(x.shape) != tuple(sample_shape):
        want = "x".join(str(d) for d in sample_shape)
        raise MorphError(
            f"{what} samples have shape {'x'.join(str(d) for d in x.shape)}, "
            f"the model input takes N x {want}"
        )
    return y is not None


def split_data(
    train_spec: str,
    val_spec: str | None,
    sample_shape: tuple[int, ...],
    images: ImageOptions,
    seed: int = 0,
) -> DataSplit:
    """The training and validation sets for a model input of ``sample_shape`` (no batch dim)."""
    train, carried = read_source(train_spec, replace(images, train=True))
    val_images = replace(images, train=False)
    val = read_source(val_spec, val_images)[0] if val_spec else carried
    if val is None:
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, round(VAL_FRACTION * len(train)))
        if len(train) - n_val < 1:
            raise MorphError(f"--data {train_spec}: too few samples to hold out validation")
        held_out = train.viewed(val_images) if isinstance(train, ImageFolder) else train
        val = Subset(held_out, order[:n_val].tolist())
        train = Subset(train, order[n_val:].tolist())
    labelled = check_fits(train, sample_shape, f"--data {train_spec}")
    val_labelled = check_fits(val, sample_shape, f"validation data of {val_spec or train_spec}")
    if labelled != val_labelled:
        raise MorphError("training and validation data must both have labels or both not")
    return DataSplit(train, val, labelled)
