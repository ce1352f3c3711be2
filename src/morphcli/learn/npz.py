"""``.npz`` arrays without reading them whole: uncompressed members are memory-mapped.

An ``.npz`` is a zip of ``.npy`` files. ``np.load(..., mmap_mode="r")`` maps nothing inside
an ``.npz``, so a training set larger than memory would be read whole; ``np.savez`` stores
members uncompressed, though, so each one is a plain ``.npy`` at some offset of the file and
can be mapped there. ``read_npz`` finds that offset from the member's local zip header,
reads the ``.npy`` header (magic, version, dtype, shape, order), checks that the bytes the
header promises lie inside the member and the file, and maps them read-only. Compressed
members (``np.savez_compressed``) cannot be mapped and are decompressed into memory.
``ArrayDataset`` serves the rows of such arrays to the training loader.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from morphcli.errors import MorphError

# The fixed part of a zip local file header: signature, versions, flags, method, times, crc,
# sizes, then the lengths of the name and the extra field that follow it.
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
LOCAL_SIGNATURE = b"PK\x03\x04"
MAX_NPY_HEADER = 10_000
ENCRYPTED = 0x1


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` by name: uncompressed members as read-only ``np.memmap``,
    compressed ones loaded. Object arrays (pickles) are refused.

    Raises:
        MorphError: not a zip, a member that is not a valid ``.npy``, or one whose header
            promises more bytes than the member or the file holds.
    """
    where = str(path)
    size = Path(path).stat().st_size
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[: -len(".npy")]
                if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & ENCRYPTED:
                    arrays[name] = _mapped(raw, info, size, where)
                else:
                    with archive.open(info) as member:
                        arrays[name] = _loaded(member, info, where)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise MorphError(f"not a readable .npz file ({error})", file=where) from None
    return arrays


def _header(stream, name: str, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, MAX_NPY_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, MAX_NPY_HEADER)
    else:
        raise MorphError(f"array {name!r}: unsupported .npy version {version}", file=where)
    if dtype.hasobject:
        raise MorphError(f"array {name!r} holds Python objects, which are not read", file=where)
    return shape, fortran, dtype


def _loaded(member, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    name = info.filename[: -len(".npy")]
    shape, fortran, dtype = _header(member, name, where)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    # The zip's own size of the member bounds what is decompressed.
    if member.tell() + nbytes != info.file_size:
        raise MorphError(
            f"array {name!r}: its header promises {nbytes} bytes, the member holds "
            f"{info.file_size - member.tell()}",
            file=where,
        )
    data = member.read(nbytes)
    if len(data) != nbytes:
        raise MorphError(f"array {name!r} is truncated", file=where)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _mapped(raw, info: zipfile.ZipInfo, file_size: int, where: str) -> np.ndarray:
    name = info.filename[: -len(".npy")]
    raw.seek(info.header_offset)
    fixed = raw.read(LOCAL_HEADER.size)
    if len(fixed) != LOCAL_HEADER.size or fixed[:4] != LOCAL_SIGNATURE:
        raise MorphError(f"array {name!r}: bad zip local header", file=where)
    *_, name_length, extra_length = LOCAL_HEADER.unpack(fixed)
    start = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
    end = start + info.compress_size
    if info.compress_size != info.file_size or end > file_size:
        raise MorphError(
            f"array {name!r} is truncated: the zip says {info.file_size} bytes, the file ends "
            f"{max(file_size - start, 0)} bytes after its start",
            file=where,
        )
    raw.seek(start)
    shape, fortran, dtype = _header(raw, name, where)
    offset = raw.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + nbytes > end:
        raise MorphError(
            f"array {name!r} is truncated: its header promises {nbytes} bytes of "
            f"{dtype} {'x'.join(map(str, shape))}, the member holds {end - offset}",
            file=where,
        )
    if nbytes == 0:
        return np.empty(shape, dtype)
    return np.memmap(where, dtype, "r", offset, shape, order="F" if fortran else "C")


class ArrayDataset(Dataset):
    """Samples ``x[i]`` (as float32 tensors) with labels ``y[i]`` where given.

    ``x`` may be a memory map: rows are read when asked for, a batch at a time through
    ``__getitems__`` (one fancy-indexed read), and a map crosses into loader workers as its
    file and offset, not as a copy of its data.
    """

    def __init__(self, x: np.ndarray, y: torch.Tensor | None = None) -> None:
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labels(self) -> np.ndarray | None:
        """The labels, known without reading any sample (checked before training)."""
        return None if self.y is None else self.y.numpy()

    def _sample(self, row: np.ndarray, index: int) -> tuple[torch.Tensor, ...]:
        tensor = torch.from_numpy(row)
        return (tensor,) if self.y is None else (tensor, self.y[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return self._sample(np.array(self.x[index], dtype=np.float32), index)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        rows = np.asarray(self.x[np.asarray(indices, dtype=np.int64)], dtype=np.float32)
        return [self._sample(row, index) for row, index in zip(rows, indices, strict=True)]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if isinstance(self.x, np.memmap):
            x = self.x
            order = "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"
            state["x"] = (x.filename, x.offset, x.dtype, x.shape, order)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["x"], tuple):
            filename, offset, dtype, shape, order = state["x"]
            state["x"] = np.memmap(filename, dtype, "r", offset, shape, order=order)
        self.__dict__.update(state)
