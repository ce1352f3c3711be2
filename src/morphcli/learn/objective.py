"""The task loss: cross entropy on labels, or distillation from the input model's outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from morphcli.errors import MorphError


def outputs_of(result: torch.Tensor | tuple | list | dict) -> tuple[torch.Tensor, ...]:
    """A module's result as a tuple of tensors, whatever the number of outputs."""
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, dict):
        return tuple(result.values())
    return tuple(result)


def batch_parts(batch: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


# An output's MSE is divided by its variance plus VARIANCE_FLOOR x the mean variance of all
# the model's (non-logit) outputs: an output that is nearly constant on the data (a
# detector's objectness on inputs with nothing to detect: variance 1e-12) would otherwise
# turn a 1e-3 deviation into a loss of 1e6 and blow training up within three steps.
VARIANCE_FLOOR = 1e-3


def _is_logits(tensor: torch.Tensor) -> bool:
    return tensor.dim() == 2 and tensor.shape[1] > 1


def _variance_floor(targets: tuple[torch.Tensor, ...]) -> float:
    variances = [float(t.var()) for t in targets if not _is_logits(t) and t.numel() > 1]
    return VARIANCE_FLOOR * (sum(variances) / len(variances) if variances else 0.0) + 1e-12


class Objective:
    """The task loss: cross entropy on labels, distillation from a teacher's outputs, or
    ``(1 - w) * cross entropy + w * distillation`` with both (``distill_weight`` w).

    Distillation compares each output with the teacher's: for a [N, C] output (logits) with
    ``T^2 * KL(softmax(t / T) || softmax(s / T))``, for any other shape with the mean squared
    error divided by the variance of the teacher's output (1 = as bad as predicting the mean;
    with a floor, ``VARIANCE_FLOOR``, for outputs that hardly vary).
    The teacher runs in the student's mode (``train``): while training, both normalise with
    batch statistics, so the loss starts at 0 whatever the original running statistics are
    (the teacher's own running statistics then follow the data, as the student's do).

    Args:
        teacher: The frozen original model; None for cross entropy alone.
        temperature: T for logits. Defaults to 1.
        distill_weight: w, the share of distillation where a batch has labels and there is
            a teacher; batches without labels are distilled alone. Defaults to 1.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        temperature: float = 1.0,
        distill_weight: float = 1.0,
    ) -> None:
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], not {distill_weight}")
        self.teacher = teacher
        self.temperature = temperature
        self.distill_weight = distill_weight

    @property
    def distills(self) -> bool:
        return self.teacher is not None

    def train(self, mode: bool = True) -> None:
        """Run the teacher in training (batch statistics) or eval mode, as the student."""
        if self.teacher is not None:
            self.teacher.train(mode)

    def __call__(
        self, outputs: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        if self.teacher is None:
            return self._cross_entropy(outputs, y)
        with torch.no_grad():
            targets = outputs_of(self.teacher(x))
        floor = _variance_floor(targets)
        distilled = sum(self._distill(s, t, floor) for s, t in zip(outputs, targets, strict=True))
        w = self.distill_weight
        if y is None or w == 1.0:
            return distilled
        return (1.0 - w) * self._cross_entropy(outputs, y) + w * distilled

    def _cross_entropy(self, outputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        if y is None:
            raise MorphError("the data has no labels: use distillation (--loss distill)")
        if len(outputs) != 1:
            raise MorphError(f"labels need a model with one output, it has {len(outputs)}")
        logits = outputs[0]
        classes = logits.shape[1] if logits.dim() > 1 else 1
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            raise MorphError(
                f"labels out of range: found {low}..{high}, the model's output has "
                f"{classes} classes (0..{classes - 1})"
            )
        return F.cross_entropy(logits, y)

    def _distill(self, student: torch.Tensor, teacher: torch.Tensor, floor: float) -> torch.Tensor:
        if _is_logits(teacher):
            t = self.temperature
            return t * t * F.kl_div(
                F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                reduction="batchmean", log_target=True,
            )  # fmt: skip
        return F.mse_loss(student, teacher) / (teacher.var() + floor)

    def accuracy(self, outputs: tuple[torch.Tensor, ...], y: torch.Tensor | None) -> float | None:
        """Top-1 accuracy (over every labelled position) with labels, else None."""
        if y is None:
            return None
        return float((outputs[0].argmax(1) == y).float().mean())
