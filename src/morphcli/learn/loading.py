"""Batches for training and evaluation: this process's share of each batch, read by loader
workers.

Training batches follow one permutation of the dataset per epoch, drawn from ``seed`` and
the epoch (``torch.randperm`` seeded ``seed * EPOCH_SEED_STRIDE + epoch``, as
``DistributedSampler`` does). A global batch of B samples is split over the world's P
processes, B / P each: rank r takes every P-th sample of the permutation from r on, so the
union of the ranks' k-th batches is the k-th batch a single process would take, and the
averaged gradient is the single-process one. Every epoch has ``n // B`` batches on every
rank (the ragged tail is dropped, so no rank waits for another at the end of an epoch).

Each sample is fetched with its epoch (``augment.epoch_key``), so random augmentation
depends on (seed, epoch, sample) alone, not on which worker or process loads it.

``--workers`` defaults to the CPUs this process may use, divided among the training
processes on this machine, less one for training itself (at most ``MAX_DEFAULT_WORKERS``),
and to 0 for arrays (in memory or memory-mapped), where a batch is one read from memory or
the page cache and a worker would only add copying between processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, TensorDataset

from morphcli.errors import MorphError
from morphcli.learn.augment import epoch_key
from morphcli.learn.distributed import World
from morphcli.learn.npz import ArrayDataset

EPOCH_SEED_STRIDE = 100_003
MAX_DEFAULT_WORKERS = 8


def available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def array_backed(dataset: Dataset) -> bool:
    """Whether samples are rows of arrays (in memory or memory-mapped): nothing to decode."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, (ArrayDataset, TensorDataset))


def default_workers(dataset: Dataset, processes_here: int) -> int:
    """Loader workers for ``dataset`` when ``--workers`` is not given, with
    ``processes_here`` training processes on this machine (see the module doc)."""
    if array_backed(dataset):
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, available_cpus() // processes_here - 1))


class _EpochKeys(Sampler):
    """The wrapped sampler's indices, each as ``epoch * n + index``."""

    def __init__(self, sampler: DistributedSampler, n: int) -> None:
        self.sampler = sampler
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.n
        return (offset + index for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochKeyed(Dataset):
    """``dataset`` fetched by ``epoch * n + index`` keys, each inside its epoch's
    augmentation key."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.n = len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int):
        epoch, index = divmod(key, self.n)
        with epoch_key(self.seed, epoch):
            return self.dataset[index]

    def __getitems__(self, keys: list[int]) -> list:
        epoch = keys[0] // self.n  # a batch never spans two epochs
        indices = [key - epoch * self.n for key in keys]
        with epoch_key(self.seed, epoch):
            if callable(getattr(self.dataset, "__getitems__", None)):
                return self.dataset.__getitems__(indices)
            return [self.dataset[index] for index in indices]


def local_batch_size(batch_size: int, world: World) -> int:
    """This rank's share of a global batch of ``batch_size``.

    Raises:
        MorphError: the batch does not split evenly over the processes.
    """
    if batch_size % world.size:
        raise MorphError(
            f"--batch-size {batch_size} (the global batch) does not split evenly over "
            f"{world.size} processes: use a multiple of {world.size}"
        )
    return batch_size // world.size


class TrainingBatches:
    """This rank's training batches, epoch after epoch (``epoch(e)``); the workers persist
    across epochs."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        world: World,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        local = local_batch_size(batch_size, world)
        n = len(dataset)
        if n < world.size:
            raise MorphError(f"{n} training samples cannot be shared by {world.size} processes")
        sampler = DistributedSampler(
            dataset, world.size, world.rank, shuffle=True, seed=seed * EPOCH_SEED_STRIDE,
            drop_last=True,
        )  # fmt: skip
        self._keys = _EpochKeys(sampler, n)
        self.loader = DataLoader(
            EpochKeyed(dataset, seed), batch_size=local, sampler=self._keys,
            drop_last=n > batch_size, num_workers=workers, pin_memory=pin_memory,
            persistent_workers=workers > 0,
        )  # fmt: skip

    def epoch(self, epoch: int) -> Iterator:
        self._keys.set_epoch(epoch)
        return worker_errors(self.loader)


def worker_errors(batches: Iterable) -> Iterator:
    """``batches``, with a MorphError raised in a loader worker (a corrupt image) re-raised
    as the original one line: torch hands it back as a new error of the same type whose
    message is the worker's whole traceback, ending with the original error's line."""
    try:
        yield from batches
    except MorphError as error:
        text = str(error)
        if "DataLoader worker" not in text:
            raise
        last = text.strip().splitlines()[-1]
        raise MorphError(last.split("MorphError: ", 1)[-1], exit_code=error.exit_code) from None


def ordered_batches(
    dataset: Dataset, batch_size: int, world: World, workers: int = 0, pin_memory: bool = False
) -> Iterator:
    """This rank's contiguous share of ``dataset`` in order (evaluation), in batches of its
    share of ``batch_size``."""
    n = len(dataset)
    if world.distributed:
        start, stop = world.rank * n // world.size, (world.rank + 1) * n // world.size
        dataset = Subset(dataset, range(start, stop))
    return worker_errors(
        DataLoader(
            dataset, batch_size=max(1, batch_size // world.size), shuffle=False,
            num_workers=workers, pin_memory=pin_memory,
        )
    )  # fmt: skip
