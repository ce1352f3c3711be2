"""How training runs: the processes, the precision, the loader workers, BN synchronisation and
``torch.compile``, bundled so that the training loop asks one object for its batches and for
the module it steps.

``Execution()`` is one process in fp32 with no loader workers: the loop as it runs in a
plain ``fit`` call. ``shrink`` builds it from ``--precision``, ``--workers``, ``--sync-bn``,
``--compile`` and the ``torchrun`` world.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from morphcli.learn.distributed import World
from morphcli.learn.loading import TrainingBatches, ordered_batches
from morphcli.learn.objective import Objective
from morphcli.learn.precision import Precision
from morphcli.learn.wrapper import OnnxModule


@dataclass
class Execution:
    """The processes (``world``), ``precision``, loader ``workers``, whether training BN
    statistics are synchronised over processes (``sync_bn``; otherwise each normalises its
    share of the batch, as DDP does by default) and whether the trained module is compiled."""

    world: World = field(default_factory=World)
    precision: Precision = field(default_factory=Precision)
    workers: int = 0
    sync_bn: bool = False
    compile: bool = False

    def __str__(self) -> str:
        parts = [str(self.world), self.precision.name]
        parts.append(f"{self.workers} loader worker{'s' * (self.workers != 1)}")
        if self.sync_bn:
            parts.append("synchronised BN")
        if self.compile:
            parts.append("compiled")
        return ", ".join(parts)

    def describe(self) -> dict:
        """What the report records about how it trained."""
        return {
            "world_size": self.world.size,
            "device": self.world.device,
            "precision": self.precision.name,
            "workers": self.workers,
            "sync_bn": self.sync_bn,
            "compile": self.compile,
        }

    def _pinned(self, device: str) -> bool:
        return torch.device(device).type == "cuda"

    def training_batches(
        self, dataset: Dataset, batch_size: int, seed: int, device: str, *, shared: bool = True
    ) -> TrainingBatches:
        """Shuffled batches of ``dataset``: this rank's share of each global batch, or with
        ``shared=False`` the whole batch on every rank (BN recalibration, done identically
        everywhere)."""
        world = self.world if shared else World()
        return TrainingBatches(dataset, batch_size, seed, world, self.workers, self._pinned(device))

    def ordered_batches(self, dataset: Dataset, batch_size: int, device: str) -> Iterator:
        """This rank's share of ``dataset`` in order (evaluation; sums are all-reduced)."""
        return ordered_batches(dataset, batch_size, self.world, self.workers, self._pinned(device))

    @contextmanager
    def training(self, module: nn.Module, objective: Objective) -> Iterator[nn.Module]:
        """The module to step while inside: ``module`` under autocast (mixed precision),
        DistributedDataParallel and ``torch.compile`` as configured. The teacher, if any,
        runs under the same autocast, and with ``sync_bn`` both normalise over the global
        batch. ``module`` and ``objective`` are as before on leaving, their buffers (BN
        running statistics) rank 0's on every process."""
        synced = []
        if self.sync_bn and self.world.distributed:
            for owner in (module, objective.teacher):
                if owner is not None:
                    synced += [m for m in owner.modules() if isinstance(m, OnnxModule)]
        for onnx_module in synced:
            onnx_module.sync_batch_norm(self.world.sum_over_ranks)
        teacher = objective.teacher
        if teacher is not None:
            objective.teacher = self.precision.wrap(teacher)
        # Synchronised BN updates the running statistics alike everywhere: nothing to send.
        model = self.world.wrap(self.precision.wrap(module), sync_buffers=not self.sync_bn)
        if self.compile:
            model = torch.compile(model)
        try:
            yield model
            # Each process updated the running statistics with its own batches last: all
            # continue with rank 0's (evaluation, checkpoints and the output read them).
            for owner in (module, teacher):
                if owner is not None:
                    self.world.share_buffers(owner)
        finally:
            objective.teacher = teacher
            for onnx_module in synced:
                onnx_module.sync_batch_norm(None)
