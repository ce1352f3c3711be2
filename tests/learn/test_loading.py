"""Memory-mapped ``.npz`` members, batches that do not depend on loader workers, and the image
augmentation (random resized crop and flip for training, resize and center crop for
validation)."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from morphcli.errors import MorphError
from morphcli.learn.augment import crop_box, epoch_key, eval_view, sample_rng, train_view
from morphcli.learn.data import ImageOptions, split_data
from morphcli.learn.distributed import World
from morphcli.learn.loading import TrainingBatches, available_cpus, default_workers
from morphcli.learn.npz import ArrayDataset, read_npz


def test_uncompressed_members_are_mapped_and_compressed_ones_loaded(tmp_path):
    arrays = {
        "x": np.arange(60, dtype=np.float32).reshape(5, 3, 4),
        "y": np.arange(5),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "empty": np.zeros((0, 3), np.uint8),
    }
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    plain, packed = read_npz(tmp_path / "plain.npz"), read_npz(tmp_path / "packed.npz")
    for name, values in arrays.items():
        for found in (plain[name], packed[name]):
            assert found.dtype == values.dtype and np.array_equal(found, values), name
    assert all(isinstance(plain[k], np.memmap) for k in ("x", "y", "fortran"))
    assert not any(isinstance(v, np.memmap) for v in packed.values())


def _npy(header_shape: tuple[int, ...], data: bytes, dtype: str = "<f4") -> bytes:
    stream = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": header_shape}
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue() + data


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_shorter_than_its_header_says_is_a_clear_error(tmp_path, method):
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("x.npy", _npy((1000,), np.zeros(10, np.float32).tobytes()))
    with pytest.raises(MorphError, match=r"array 'x'.*promises 4000 bytes.*holds 40"):
        read_npz(path)


def test_object_arrays_and_broken_files_are_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(MorphError, match="array 'x' holds Python objects"):
        read_npz(path)
    cut = tmp_path / "cut.npz"
    np.savez(cut, x=np.zeros((100, 10), np.float32))
    cut.write_bytes(cut.read_bytes()[:-300])
    with pytest.raises(MorphError, match=r"not a readable \.npz file"):
        read_npz(cut)


def test_a_mapped_dataset_reads_batches_and_pickles_as_its_file(tmp_path):
    x = np.random.default_rng(0).random((50, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    dataset = ArrayDataset(read_npz(tmp_path / "d.npz")["x"], torch.arange(50))
    batch = dataset.__getitems__([7, 3, 41])
    for (row, label), index in zip(batch, [7, 3, 41], strict=True):
        assert torch.equal(row, dataset[index][0]) and int(label) == index
        assert torch.equal(row, torch.from_numpy(x[index]))
    blob = pickle.dumps(dataset)
    assert len(blob) < x.nbytes // 10  # the map travels as file and offset, not as data
    copy = pickle.loads(blob)
    assert isinstance(copy.x, np.memmap) and np.array_equal(copy.x, x)
    assert default_workers(dataset, 1) == 0  # rows of arrays: nothing to decode


def _image_folder(root, n=6):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(n // 2):
            pixels = rng.integers(0, 256, (40 + 3 * i, 60, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")


def test_augmented_batches_are_the_same_with_or_without_workers(tmp_path):
    _image_folder(tmp_path / "images")
    options = ImageOptions(channels=3, size=(16, 16), augment="crop-flip")
    split = split_data(str(tmp_path / "images"), None, (3, 16, 16), options)
    assert default_workers(split.train, 2) == max(0, min(8, available_cpus() // 2 - 1))
    runs = []
    for workers in (0, 2):
        batches = TrainingBatches(split.train, 2, seed=5, world=World(), workers=workers)
        runs.append([[b[0] for b in batches.epoch(epoch)] for epoch in (0, 1)])
    for epoch in (0, 1):
        for a, b in zip(runs[0][epoch], runs[1][epoch], strict=True):
            assert torch.equal(a, b), f"epoch {epoch}: workers changed the augmented batch"
    assert not torch.equal(runs[0][0][0], runs[0][1][0]), "epoch 1 repeated epoch 0's views"
    # The held-out validation images take the deterministic view.
    path, _ = split.val.dataset.items[split.val.indices[0]]
    with Image.open(path) as image:
        view = eval_view(image.convert("RGB"), (16, 16), "crop-flip")
    expected = torch.from_numpy(np.asarray(view, np.float32).transpose(2, 0, 1) / 255.0)
    assert torch.allclose(split.val[0][0], expected)


def test_random_resized_crops_keep_scale_and_aspect_in_range():
    rng = np.random.default_rng(1)
    for _ in range(300):
        left, top, right, bottom = crop_box(300, 200, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        assert 0.08 * 0.97 <= w * h / 60_000 <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    # A strip no allowed crop fits: the central crop of the nearest allowed aspect.
    assert crop_box(1000, 10, rng) == (493, 0, 506, 10)


def test_flip_draws_are_a_function_of_seed_epoch_and_sample():
    image = Image.fromarray(np.tile(np.arange(16, dtype=np.uint8), (16, 1)))

    def flipped(seed, epoch, index):
        with epoch_key(seed, epoch):
            view = train_view(image, (16, 16), "flip", sample_rng(index))
        return np.asarray(view)[0, 0] == 15

    draws = [flipped(0, 0, i) for i in range(200)]
    assert draws == [flipped(0, 0, i) for i in range(200)]
    assert 70 < sum(draws) < 130
    assert draws != [flipped(0, 1, i) for i in range(200)]


def test_validation_view_resizes_to_cover_and_takes_the_centre():
    pixels = np.zeros((50, 100), np.uint8)
    pixels[:, 50:] = 255  # left half black, right half white
    view = np.asarray(eval_view(Image.fromarray(pixels), (28, 28), "crop-flip"))
    # Resized to 64x32 (covering 32x32 = 28 / 0.875), then columns 18..46 of it.
    assert view.shape == (28, 28)
    assert (view[:, :12] == 0).all() and (view[:, -12:] == 255).all()
    plain = np.asarray(eval_view(Image.fromarray(pixels), (28, 28), "none"))
    assert plain.shape == (28, 28) and (plain[:, :12] == 0).all()
