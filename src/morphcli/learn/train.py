"""The training loop: epochs of the task loss with the penalty's proximal steps, optimizers,
BN recalibration.

``fit`` runs whole epochs of the task loss with SGD (momentum 0.9) or Adam, each optimizer
step followed by the proximal step of ``lr * lambda * penalty`` when structure learning (no
penalty when fine-tuning), at a fixed learning rate or a cosine decay, shuffling with a
generator seeded by
``seed`` and the epoch index, so a run resumed at an epoch boundary sees the same batches as an
uninterrupted one. After every epoch it calls ``on_epoch`` (where the caller checkpoints).

An ``Execution`` says how: in one process or data parallel under ``torchrun`` (each rank
takes its share of every global batch of ``batch_size``; DDP averages the gradients; the
penalty's decisions and the reported means are all-reduced), in which precision, with how
many loader workers. Without one, training runs in this process in fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from morphcli.learn.execution import Execution
from morphcli.learn.finite import check_evaluation, check_step, check_weights, non_finite
from morphcli.learn.objective import Objective, batch_parts, outputs_of
from morphcli.learn.penalty import MorphNetPenalty
from morphcli.learn.precision import Precision
from morphcli.learn.progress import Progress
from morphcli.learn.strength import Strength

DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}
MOMENTUM = 0.9
# lambda auto (see Strength) aims to reach its goal by DEADLINE of the phase's steps (the
# rest lets the new structure settle); the alive cost is checked every CHECK_STEPS steps.
DEADLINE = 0.75
CHECK_STEPS = 5
# Batches that refresh BN running statistics (momentum 0.1: the old values keep 0.9^50).
RECALIBRATION_BATCHES = 50


@dataclass
class Schedule:
    """How long and how to train. ``steps`` overrides ``epochs`` when given; ``cosine`` decays
    the learning rate per step (fine-tuning; structure learning keeps it fixed)."""

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None
    seed: int = 0
    cosine: bool = False

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def lr_at(self, step: int, total: int) -> float:
        """The cosine decay from ``base_lr`` to 0 over ``total`` steps (fine-tuning)."""
        return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * step / max(total, 1)))

    def steps_per_epoch(self, samples: int) -> int:
        return max(1, samples // self.batch_size) if samples > self.batch_size else 1

    def total_epochs(self, samples: int) -> int:
        if self.steps is None:
            return self.epochs
        return math.ceil(self.steps / self.steps_per_epoch(samples))


@dataclass
class EpochStats:
    """What one epoch did (means over its steps and processes; the alive cost at its end;
    the images all processes trained on and the seconds it took)."""

    epoch: int
    loss: float
    penalty: float | None = None
    strength: float | None = None
    alive_cost: float | None = None
    images: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def make_optimizer(module: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    lr = schedule.base_lr
    params = [p for p in module.parameters() if p.requires_grad]
    if schedule.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)


def recalibrate(
    module: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: str,
    seed: int = 0,
    *,
    execution: Execution | None = None,
) -> None:
    """Refresh normalisation running statistics: RECALIBRATION_BATCHES forward passes in
    train mode without gradients, going over ``dataset`` again (reshuffled) when it has
    fewer batches, so the old statistics keep at most 0.9^50 of their weight. Every process
    runs the same batches, so all reach the same statistics.

    Structure learning shrinks scales every step, so the running statistics lag behind the
    weights and an eval-mode model is far worse than the trained one; this catches them up.
    Surgery changes what every channel sums over, which stales them the same way.
    """
    execution = execution or Execution()
    batches = execution.training_batches(dataset, batch_size, seed, device, shared=False)
    was_training = module.training
    settings = non_finite(module)
    module.train()
    done, epoch = 0, 0
    with torch.no_grad():
        while done < RECALIBRATION_BATCHES:
            for batch in batches.epoch(epoch):
                module(batch_parts(batch)[0].to(device, non_blocking=True))
                done += 1
                if done == RECALIBRATION_BATCHES:
                    break
            epoch += 1
    module.train(was_training)
    check_weights(module, "re-estimating the BN statistics", allowed=settings)


def evaluate(
    module: nn.Module,
    dataset: Dataset,
    objective: Objective,
    batch_size: int,
    device: str,
    *,
    execution: Execution | None = None,
) -> tuple[float, float | None]:
    """Mean loss and accuracy (None without labels) over ``dataset``, in eval mode (each
    process takes its share; the sums are all-reduced)."""
    execution = execution or Execution()
    was_training = module.training
    module.eval()
    objective.train(False)
    total, correct, count = 0.0, 0.0, 0
    labelled = True
    with torch.no_grad():
        for batch in execution.ordered_batches(dataset, batch_size, device):
            x, y = batch_parts(batch)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True) if y is not None else None
            outputs = outputs_of(module(x))
            n = len(x)
            total += float(objective(outputs, x, y)) * n
            accuracy = objective.accuracy(outputs, y)
            labelled = labelled and accuracy is not None
            correct += (accuracy or 0.0) * n
            count += n
    module.train(was_training)
    objective.train(was_training)
    total, correct, count = (float(v) for v in execution.world.sum([total, correct, count]))
    check_evaluation(total / count)
    return total / count, (correct / count if labelled else None)


def fit(
    module: nn.Module,
    dataset: Dataset,
    objective: Objective,
    schedule: Schedule,
    device: str,
    progress: Progress,
    label: str,
    *,
    penalty: MorphNetPenalty | None = None,
    strength: Strength | None = None,
    start_epoch: int = 0,
    optimizer_state: dict | None = None,
    on_epoch: Callable[[EpochStats, torch.optim.Optimizer], None] | None = None,
    execution: Execution | None = None,
) -> list[EpochStats]:
    """Train ``module`` in place from epoch ``start_epoch`` to the schedule's end.

    With ``penalty`` every optimizer step is followed by ``penalty.shrink(lr *
    strength.value)`` (the proximal step of the penalty, the same on every process, whose
    parameters DDP keeps equal), and ``strength`` is checked every CHECK_STEPS steps against
    the alive cost (decided from values averaged over processes), with the deadline at
    DEADLINE of the phase's steps.
    """
    execution = execution or Execution()
    world = execution.world
    module.to(device)
    module.train()
    objective.train()
    optimizer = make_optimizer(module, schedule)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    batches = execution.training_batches(dataset, schedule.batch_size, schedule.seed, device)
    per_epoch = schedule.steps_per_epoch(len(dataset))
    epochs = schedule.total_epochs(len(dataset))
    total_steps = schedule.steps if schedule.steps is not None else epochs * per_epoch
    history = []
    reference = None
    if penalty is not None:
        reference = penalty.full_cost()
    settings = non_finite(module)
    first_loss = None
    progress.start(label, total_steps, start_epoch * per_epoch, reference)
    try:
        with execution.training(module, objective) as model:
            for epoch in range(start_epoch, epochs):
                sums = {"loss": 0.0, "penalty": 0.0}
                steps = images = 0
                started = time.perf_counter()
                for batch in batches.epoch(epoch):
                    step = epoch * per_epoch + steps
                    if step >= total_steps:
                        break
                    if schedule.cosine:
                        for param_group in optimizer.param_groups:
                            param_group["lr"] = schedule.lr_at(step, total_steps)
                    metrics = _step(
                        model, batch, objective, optimizer, device, penalty, strength,
                        execution.precision,
                    )  # fmt: skip
                    first_loss = metrics["loss"] if first_loss is None else first_loss
                    x = batch_parts(batch)[0]
                    check_step(metrics, x, step, label, schedule.base_lr, first_loss)
                    steps += 1
                    images += len(x) * world.size
                    for key in sums:
                        sums[key] += metrics.get(key) or 0.0
                    if penalty is not None and (step + 1) % CHECK_STEPS == 0:
                        metrics["alive"] = penalty.cost()
                        strength.check(metrics["alive"], (step + 1) / (DEADLINE * total_steps))
                    metrics["images_per_s"] = images / (time.perf_counter() - started)
                    progress.advance(metrics)
                seconds = time.perf_counter() - started
                means = world.mean([sums["loss"], sums["penalty"]]) / max(steps, 1)
                stats = EpochStats(epoch, float(means[0]), images=images, seconds=seconds)
                if penalty is not None:
                    stats.penalty = float(means[1])
                    stats.strength = strength.value
                    stats.alive_cost = penalty.cost()
                check_weights(module, f"{label} epoch {epoch + 1}", schedule.base_lr, settings)
                history.append(stats)
                progress.epoch_done(stats, epochs)
                if on_epoch is not None:
                    on_epoch(stats, optimizer)
    finally:
        progress.stop()
    return history


def _step(
    module: nn.Module,
    batch: torch.Tensor | tuple,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    device: str,
    penalty: MorphNetPenalty | None,
    strength: Strength | None,
    precision: Precision,
) -> dict[str, float]:
    """One optimizer step on the task loss, then the penalty's proximal step; returns the
    loss and penalty values."""
    x, y = batch_parts(batch)
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True) if y is not None else None
    task = objective(outputs_of(module(x)), x, y)
    metrics = {"loss": task.item()}
    optimizer.zero_grad(set_to_none=True)
    precision.step(task, optimizer)
    if penalty is not None:
        penalty.shrink(optimizer.param_groups[0]["lr"] * strength.value, optimizer)
        with torch.no_grad():
            metrics["penalty"] = penalty().item()
    return metrics
