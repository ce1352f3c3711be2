"""The processes of a run: one without a launcher, or one per rank under ``torchrun``.

``start_world`` reads what ``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group: gloo on
CPU, NCCL on CUDA, where each process takes the GPU of its local rank. Without those
variables (or with a world of one) nothing is joined and every collective is the identity,
so the same code runs in one process or many.

Every structural decision (which channels are alive, lambda's steering, when to stop) is taken
by all ranks from the same all-reduced values, and the structure they reach is compared
(``check_identical``): a rank that disagrees stops the run with an internal error rather than
let the ranks train different models. Only the main rank (rank 0) writes files and progress;
what it reads for everyone (a checkpoint) it broadcasts (``from_main``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import onnx
import torch
import torch.distributed as dist
from torch import nn

from morphcli.errors import EXIT_INTERNAL, MorphError

T = TypeVar("T")
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes, and the device it trains on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    local_size: int = 1  # processes on this machine

    def __str__(self) -> str:
        if self.size == 1:
            return f"1 process on {self.device}"
        kind = torch.device(self.device).type
        return f"{self.size} processes on {kind} ({dist.get_backend()})"

    @property
    def main(self) -> bool:
        """Whether this process writes files and progress (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def _collective_device(self) -> torch.device:
        # NCCL reduces tensors on the GPU; gloo on the CPU.
        return torch.device(self.device if self.device.startswith("cuda") else "cpu")

    def sum(self, values: np.ndarray | list[float] | float) -> np.ndarray:
        """The sum over ranks of ``values`` (float64), identical on every rank."""
        array = np.array(values, dtype=np.float64)
        if not self.distributed:
            return array
        tensor = torch.from_numpy(array).to(self._collective_device())
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    def mean(self, values: np.ndarray | list[float] | float) -> np.ndarray:
        """The mean over ranks of ``values`` (float64), identical on every rank."""
        return self.sum(values) / self.size

    def from_main(self, read: Callable[[], T]) -> T:
        """``read()`` on the main rank, its result (or its MorphError) sent to every rank:
        one reader for files that only the main rank's machine may hold."""
        if not self.distributed:
            return read()
        payload: list = [None]
        if self.main:
            try:
                payload = [("ok", read())]
            except MorphError as error:
                dist.broadcast_object_list([("error", (str(error), error.exit_code))], src=0)
                raise
        dist.broadcast_object_list(payload, src=0)
        kind, value = payload[0]
        if kind == "error":
            message, exit_code = value
            raise MorphError(message, exit_code=exit_code)
        return value

    def check_identical(self, what: str, digest: str) -> None:
        """Raise an internal error (exit 3) unless every rank holds the same ``digest``."""
        if not self.distributed:
            return
        digests: list = [None] * self.size
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            seen = ", ".join(f"rank {rank} {d[:12]}" for rank, d in enumerate(digests))
            raise MorphError(
                f"the {self.size} processes disagree on {what} ({seen}); this is a bug, "
                "please report it",
                exit_code=EXIT_INTERNAL,
            )

    def wrap(self, module: nn.Module, sync_buffers: bool = True) -> nn.Module:
        """``module`` under DistributedDataParallel (gradients averaged over ranks), or
        itself in a world of one. DDP starts every rank from rank 0's parameters and buffers;
        ``sync_buffers`` also sends rank 0's buffers (BN running statistics) before every
        forward."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(
            module, device_ids=device_ids, forward_sync_buffers=sync_buffers
        )

    def share_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers of ``module`` (BN running statistics)."""
        if not self.distributed:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks, with gradients (the gradient of a sum is summed
        the same way): what synchronised BatchNormalization reduces its statistics with."""
        if not self.distributed:
            return tensor
        return _SumOverRanks.apply(tensor)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None and default is not None:
        return default
    try:
        return int(text)
    except (TypeError, ValueError):
        raise MorphError(f"environment variable {name}={text!r} is not an integer") from None


def resolve_device(device: str, local_rank: int = 0) -> str:
    """``cpu``, ``cuda`` or ``auto`` (CUDA where there is a GPU) as this process's device:
    ``cuda:LOCAL_RANK`` on CUDA, one GPU per process."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device != "cuda":
        raise MorphError(f"--device {device}: expected cpu, cuda or auto")
    if not torch.cuda.is_available():
        raise MorphError("--device cuda: no CUDA device is available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise MorphError(
            f"--device cuda: local rank {local_rank} needs GPU {local_rank}, but this machine "
            f"has {count}: start at most {count} processes per machine"
        )
    return f"cuda:{local_rank}"


def start_world(device: str) -> World:
    """Join the process group that ``torchrun`` describes in the environment, or make a world
    of one process without it.

    Raises:
        MorphError: the environment is inconsistent (a rank outside the world, a missing
            rendezvous address), the device cannot be had, or the group cannot be joined.
    """
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World(device=resolve_device(device, _env_int("LOCAL_RANK", 0)))
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise MorphError(
            f"WORLD_SIZE={size} but {', '.join(missing)} not set: launch with torchrun"
        )
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < size or local_rank < 0:
        raise MorphError(f"RANK={rank} / LOCAL_RANK={local_rank} outside a world of {size}")
    where = resolve_device(device, local_rank)
    cuda = where.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            rank=rank,
            world_size=size,
            device_id=torch.device(where) if cuda else None,
        )
    except (RuntimeError, ValueError, OSError) as error:
        raise MorphError(f"cannot join the process group of {size} processes ({error})") from None
    return World(rank, size, local_rank, where, _env_int("LOCAL_WORLD_SIZE", size))


def structure_digest(proto: onnx.ModelProto) -> str:
    """sha256 of a model's structure: its nodes (with attributes), inputs, outputs and every
    initializer's name, dtype and shape; the weights' values are left out."""
    digest = hashlib.sha256()
    graph = proto.graph
    for node in graph.node:
        digest.update(node.SerializeToString(deterministic=True))
    for value in (*graph.input, *graph.output):
        digest.update(value.SerializeToString(deterministic=True))
    for tensor in graph.initializer:
        digest.update(f"{tensor.name}:{tensor.data_type}:{list(tensor.dims)};".encode())
    return digest.hexdigest()
