"""Finite or nothing: training stops at the first non-finite loss, penalty or weight, and at
a loss that has blown up (DIVERGED times the phase's first loss, plus one): a finite model
that far off is as useless as a NaN one.

A NaN or Inf never recovers: every later step, the dead-channel decision (a NaN scale is
under no threshold) and the widths found from it would be garbage. ``fit`` checks each step's
loss and penalty and every weight and running statistic after each epoch (before it is
checkpointed); ``evaluate`` checks its loss. The error (exit code 1) says what went
non-finite, where, and what to try; nothing is written.
"""

from __future__ import annotations

import math
from itertools import chain

import torch
from torch import nn

from morphcli.errors import EXIT_BUDGET, MorphError

# A loss over DIVERGED x (1 + the phase's first loss) has blown up: no fine-tuning or
# structure learning raises a loss a hundredfold (a normalised distillation loss of 100 is
# a hundred times worse than predicting the teacher's mean).
DIVERGED = 100.0


def _diverged(what: str, hint: str) -> MorphError:
    return MorphError(
        f"training diverged: {what}; {hint}; nothing was written", exit_code=EXIT_BUDGET
    )


def check_step(
    metrics: dict[str, float],
    x: torch.Tensor,
    step: int,
    label: str,
    lr: float,
    first_loss: float | None = None,
) -> None:
    """Raise when the step's loss or penalty is NaN or Inf, or the loss has blown up.

    Args:
        metrics: The step's "loss" and maybe "penalty".
        x: The step's input batch (a non-finite input names the data as the cause).
        step: The step's index in the phase (0-based).
        label: The phase ("round 1 learn", "fine-tune").
        lr: The learning rate the run uses.
        first_loss: The loss of the phase's first step. Defaults to None (no blow-up check).
    """
    bad = [(k, v) for k, v in metrics.items() if v is not None and not math.isfinite(v)]
    loss = metrics.get("loss")
    if not bad and first_loss is not None and loss > DIVERGED * (1.0 + first_loss):
        raise _diverged(
            f"the loss reached {loss:.4g} at {label} step {step + 1}, from {first_loss:.4g} at "
            "the phase's first step",
            f"try a lower --lr (this run used {lr:g}) and check the data for outliers",
        )
    if not bad:
        return
    name, value = bad[0]
    what = f"the {name} is {value} at {label} step {step + 1}"
    if not bool(torch.isfinite(x).all()):
        hint = "that step's input batch holds NaN or Inf: clean the training data"
    elif step == 0:
        hint = (
            "on the first step, before any update: check the data's scale (--mean, --std) "
            "and --temperature"
        )
    else:
        hint = f"try a lower --lr (this run used {lr:g}) and check the data for outliers"
    raise _diverged(what, hint)


def non_finite(module: nn.Module) -> frozenset[str]:
    """The module's parameters and buffers that hold NaN or Inf (before training: settings
    such as an ``inf`` Clip bound, which stay as they are)."""
    return frozenset(
        name
        for name, tensor in chain(module.named_parameters(), module.named_buffers())
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    )


def check_weights(
    module: nn.Module, where: str, lr: float | None = None, allowed: frozenset[str] = frozenset()
) -> None:
    """Raise when a weight or running statistic not in ``allowed`` holds NaN or Inf after
    ``where`` ("round 1 learn epoch 3")."""
    bad = sorted(non_finite(module) - allowed)
    if bad:
        # An OnnxModule names its tensors as the ONNX model does.
        onnx_names = {key: name for name, key in getattr(module, "onnx_names", {}).items()}
        used = f" (this run used {lr:g})" if lr is not None else ""
        raise _diverged(
            f"{onnx_names.get(bad[0], bad[0])} holds NaN or Inf after {where}",
            f"try a lower --lr{used} and clean the training data",
        )


def check_evaluation(loss: float) -> None:
    """Raise when the mean loss over the validation data is NaN or Inf."""
    if not math.isfinite(loss):
        raise MorphError(
            f"the validation loss is {loss}: the validation data holds NaN or Inf, or training "
            "diverged (try a lower --lr); nothing was written",
            exit_code=EXIT_BUDGET,
        )
