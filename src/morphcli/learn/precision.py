"""Mixed precision: the forward passes of training run under autocast, the rest stays fp32.

``--precision bf16`` or ``fp16`` runs the student's and the teacher's training forward under
``torch.autocast`` (convolutions and matrix products in the low precision), and returns their
outputs as fp32, so the task loss, the penalty (computed from the fp32 parameters) and the
optimizer's state are fp32. BatchNormalization keeps fp32 parameters and running statistics
(torch's mixed batch norm, or the synchronised one, which reduces in fp32). fp16 scales the
loss (a ``GradScaler``) so small gradients do not flush to zero; a step whose gradients
overflowed is skipped and the scale lowered. Evaluation, BN recalibration and the weights
written back to ONNX are fp32.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from morphcli.errors import MorphError
from morphcli.learn.objective import outputs_of

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """A training precision on one device type ("cpu" or "cuda"). Build it with
    ``Precision.for_device``, which refuses combinations that do not work or do not pay."""

    name: str = "fp32"
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.name == "fp16" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device_type)

    @classmethod
    def for_device(cls, name: str, device: str) -> Precision:
        """The precision ``--precision name`` on ``device``.

        Raises:
            MorphError: fp16 on a CPU (emulated there, over 100x slower than fp32), bf16 on
                a GPU without bf16 support.
        """
        device_type = torch.device(device).type
        if name == "fp16" and device_type != "cuda":
            raise MorphError(
                "--precision fp16 needs CUDA (a CPU emulates fp16, far slower than fp32); "
                "use bf16 or fp32 on a CPU"
            )
        if name == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise MorphError("--precision bf16: this GPU does not support bf16; use fp16")
        return cls(name, device_type)

    @property
    def mixed(self) -> bool:
        return PRECISIONS[self.name] is not None

    def autocast(self):
        """The autocast context of a training forward (nothing for fp32)."""
        if not self.mixed:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=PRECISIONS[self.name])

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` whose forward runs under autocast in training mode (fp32 in eval mode)
        and returns fp32 outputs; ``module`` itself for fp32."""
        return Autocast(module, self) if self.mixed else module

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward, the gradient clipped to MAX_GRAD_NORM, and the optimizer step (through
        the gradient scaler for fp16, clipping the unscaled gradient)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        self.scaler.step(optimizer)
        self.scaler.update()


# The gradient's global norm is clipped to this. Fine-tuning a trained model moves it by
# norms of 0.5 to 3 (the Fashion-MNIST seeds, cross entropy or distillation), where this
# never binds; a BN-folded detector whose channels the penalty has just removed can see 300,
# which at lr 0.01 blew it up to NaN within two steps (YuNet, distilled on 58 inputs).
MAX_GRAD_NORM = 10.0


class Autocast(nn.Module):
    """Runs ``inner`` under autocast while training and hands back fp32 outputs."""

    def __init__(self, inner: nn.Module, precision: Precision) -> None:
        super().__init__()
        self.inner = inner
        self._precision = precision

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        if not self.training:
            return self.inner(*args)
        with self._precision.autocast():
            result = self.inner(*args)
        outputs = tuple(o.float() for o in outputs_of(result))
        return outputs[0] if len(outputs) == 1 else outputs
