"""What ``morphnet shrink`` was asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field

from morphcli.learn.checkpoint import file_digest
from morphcli.learn.train import Schedule
from morphcli.surgery.latency import LatencySetup

# Learning keeps every group at least this share of the width one uniform multiplier would
# give it at the learning goal (``algorithm.width_floors``). MorphNet - uniform at 25% FLOPs
# on the Fashion-MNIST seeds (5 paired seeds; VGG, MobileNetV2, narrow and 2x ResNet), free
# learning: +1.19, -2.10, -0.24, -0.51; 0.8: +1.86, +0.25, -0.14, -0.55; 0.9: +1.54, +0.46,
# -0.03, -0.39 (12k images, before revival). With revival, on the 2x ResNet: free -1.02, 0.8
# -0.48, 0.9 -0.07, 1.0 +0.04 (README, quality benchmark).
WIDTH_FLOOR = 0.9


@dataclass
class ShrinkConfig:
    """Everything ``morphnet shrink`` was asked to do."""

    model: str
    output: str
    target: str
    data: str
    resource: str = "flops"
    val_data: str | None = None
    rounds: int = 1
    learn: Schedule = field(default_factory=Schedule)
    finetune_epochs: int = 3
    round_to: int = 1
    strength: str = "auto"
    mode: str = "auto"
    width_floor: float = WIDTH_FLOOR
    loss: str = "auto"
    temperature: float = 1.0
    distill_weight: float | None = None
    device: str = "cpu"
    work_dir: str = ""
    report: str | None = None
    resume: bool = False
    input_shapes: dict[str, list[int]] | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    latency: LatencySetup = field(default_factory=LatencySetup)
    export_structure: str | None = None
    baseline: str | None = None
    precision: str = "fp32"
    workers: int | None = None
    sync_bn: bool = False
    compile: bool = False
    augment: str = "none"

    def fingerprint(self) -> dict:
        found = {
            "model": file_digest(self.model),
            "target": f"{self.resource} {self.target}",
            "data": self.data,
            "rounds": self.rounds,
            "baseline": self.baseline,
        }
        if self.resource == "latency":
            found["runtime"] = str(self.latency.runtime)
        return found
