"""Fashion-MNIST from the IDX gz files, and the small subset committed for tests.

``python sample_models/fashion_mnist.py`` writes ``sample_models/fashion_mnist_subset.npz``:
``x`` / ``y`` hold 4000 training images (400 per class) and ``x_val`` / ``y_val`` 1000 images
(100 per class) of the official test split, drawn with a fixed seed. Images are float32
[N, 1, 28, 28] scaled to [0, 1]; labels are int64.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
SUBSET_PATH = Path(__file__).resolve().parent / "fashion_mnist_subset.npz"
NUM_CLASSES = 10

# IDX type code -> numpy dtype (big-endian, as the format stores it)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed if the name ends in .gz) into an array of its shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    array = np.frombuffer(data, dtype, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {array.size} values for shape {shape}")
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def _load_split(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 [N, 1, 28, 28] in [0, 1] and labels as int64 for one split."""
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return x, labels.astype(np.int64)


def load_full(
    root: str | Path = DEFAULT_ROOT,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The full dataset: (x_train, y_train, x_test, y_test), 60000 and 10000 images."""
    root = Path(root)
    x_train, y_train = _load_split(root, "train")
    x_test, y_test = _load_split(root, "t10k")
    return x_train, y_train, x_test, y_test


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random indices of every class, shuffled together."""
    picks = [
        rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        for c in range(NUM_CLASSES)
    ]
    return rng.permutation(np.concatenate(picks))


def make_subset(
    root: str | Path = DEFAULT_ROOT,
    path: str | Path = SUBSET_PATH,
    n_train: int = 4000,
    n_val: int = 1000,
    seed: int = 0,
) -> Path:
    """Write the class-balanced subset (train from the train split, val from the test split)."""
    x_train, y_train, x_test, y_test = load_full(root)
    rng = np.random.default_rng(seed)
    train_idx = balanced_indices(y_train, n_train // NUM_CLASSES, rng)
    val_idx = balanced_indices(y_test, n_val // NUM_CLASSES, rng)
    np.savez_compressed(
        path,
        x=x_train[train_idx],
        y=y_train[train_idx],
        x_val=x_test[val_idx],
        y_val=y_test[val_idx],
    )
    return Path(path)


if __name__ == "__main__":
    written = make_subset()
    print(f"wrote {written} ({written.stat().st_size} bytes)")
