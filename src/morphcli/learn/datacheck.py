"""What training data must be, checked before it is read whole or trained on (``data`` calls
these): every failure is a MorphError (exit 2) naming the file.

- ``.npz``: a zip of ``.npy`` members whose headers are read first: no pickled (object)
  arrays, and no array that declares more bytes than its member stores (truncated or lying)
  or than the memory limit allows; anything else (empty, truncated, a plain ``.npy``) is not
  an ``.npz``.
- Images: decoded under Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``; an
  image over it is refused, not decoded); corrupt files are named.
- ``module:function``: importing it, calling it, and reading its length and first item may
  fail in any way; each failure is reported, as is a result that is not a Dataset.
- Labels, where the dataset holds them (arrays, image folders), are in ``0..classes-1``
  before training starts.
"""

from __future__ import annotations

import importlib
import warnings
import zipfile
import zlib
from collections.abc import Callable
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset, TensorDataset

from morphcli.errors import MorphError
from morphcli.limits import check_memory

_NPY_MAGIC = b"\x93NUMPY"
# np.load reports a bad file in several ways, zipfile too (encrypted, an unknown method, a
# bad deflate stream).
READ_ERRORS = (OSError, ValueError, EOFError, RuntimeError, NotImplementedError)
READ_ERRORS += (zipfile.BadZipFile, zlib.error)


def check_npz(path: Path) -> None:
    """Refuse an ``.npz`` that ``np.load`` would choke on or fill memory with (see above)."""
    where = str(path)
    if not path.is_file():  # never open a FIFO or a device: it could block or never end
        raise MorphError("not a regular file", file=where)
    with open(path, "rb") as stream:
        start = stream.read(len(_NPY_MAGIC))
    if start == _NPY_MAGIC:
        raise MorphError(
            "a plain .npy array, not an .npz: save it with np.savez(path, x=..., y=...)",
            file=where,
        )
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as member:
                        _check_member(member, info, where)
    except MorphError:
        raise
    except Exception as error:  # numpy's header parser raises anything, tokenize errors too
        raise MorphError(f"not a readable .npz file ({_reason(error)})", file=where) from None


def _check_member(member: Any, info: zipfile.ZipInfo, where: str) -> None:
    name = info.filename[: -len(".npy")]
    major, _ = np.lib.format.read_magic(member)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read(member)
    if dtype.hasobject:
        raise MorphError(f"array {name!r} holds Python objects (pickled data): refused", file=where)
    declared = prod(shape) * dtype.itemsize
    stored = info.file_size - member.tell()
    if declared > stored:
        raise MorphError(
            f"array {name!r} declares {declared} bytes ({'x'.join(map(str, shape))} "
            f"{dtype}) but stores {stored}: the file is truncated or corrupt",
            file=where,
        )
    if info.compress_type != zipfile.ZIP_STORED:  # decompressed whole (stored ones are mapped)
        check_memory(declared, f"array {name!r}", file=where)


def read_image(path: Path, decode: Callable[[Any], Any]) -> Any:
    """``decode(image)`` of the image at ``path``, opened under Pillow's bomb limit."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return decode(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MorphError(
            f"the image is over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} "
            "pixels: refused",
            file=str(path),
        ) from None
    except (*READ_ERRORS, SyntaxError, MemoryError) as error:
        raise MorphError(f"not a readable image ({_reason(error)})", file=str(path)) from None


def call_dataset(spec: str) -> Dataset:
    """The dataset ``module:function`` returns, with its length and first item read once."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as error:  # the user's module may fail to import in any way
        raise MorphError(f"--data {spec}: cannot load it ({_reason(error)})") from None
    try:
        dataset = function()
    except Exception as error:
        raise MorphError(f"--data {spec}: it raised {_reason(error)}") from None
    if not isinstance(dataset, Dataset) and not (
        hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
    ):
        raise MorphError(f"--data {spec}: returned {type(dataset).__name__}, not a Dataset")
    try:
        if len(dataset) > 0:
            dataset[0]
    except Exception as error:
        raise MorphError(f"--data {spec}: reading its first item raised {_reason(error)}") from None
    return dataset


def _known_labels(dataset: Dataset) -> np.ndarray | None:
    """The labels a dataset holds without reading its samples, or None."""
    if isinstance(dataset, Subset):
        labels = _known_labels(dataset.dataset)
        return None if labels is None else labels[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        return dataset.tensors[1].numpy()
    labels = getattr(dataset, "labels", None)  # datasets that know them (ImageFolder)
    return np.asarray(labels) if isinstance(labels, np.ndarray) else None


def check_labels(datasets: dict[str, Dataset], classes: int) -> None:
    """Labels must be class indices of the model's output (``0..classes-1``)."""
    for what, dataset in datasets.items():
        labels = _known_labels(dataset)
        if labels is None or labels.size == 0:
            continue
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise MorphError(
                f"{what}: labels out of range: found {low}..{high}, the model's output has "
                f"{classes} classes (0..{classes - 1})"
            )


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
