"""What stays fixed during a shrink run: the input model, the target, the data, the loss and
how training runs (device, processes, precision, loader workers), read and checked once up
front (``prepare``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from morphcli.errors import EXIT_BUDGET, MorphError
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model, load_model, model_from_proto
from morphcli.learn.checkpoint import LEARN, ShrinkState, load_state, save_state
from morphcli.learn.data import DataSplit, ImageOptions, split_data
from morphcli.learn.distributed import World, resolve_device
from morphcli.learn.execution import Execution
from morphcli.learn.loading import default_workers, local_batch_size
from morphcli.learn.objective import Objective
from morphcli.learn.precision import Precision
from morphcli.learn.progress import Progress
from morphcli.learn.train import EpochStats, evaluate
from morphcli.learn.wrapper import OnnxModule
from morphcli.outputs import OutputPlan
from morphcli.report.format import human
from morphcli.report.progress import StepBar
from morphcli.resources.cost import CostModel, build_cost_model
from morphcli.resources.resource import Resource, ResourceKind, resource_kind
from morphcli.resources.targets import LatencyTarget, parse_latency_target, parse_target
from morphcli.shrink.checks import (
    check_data_labels,
    check_growth,
    check_image_size,
    check_outputs,
    check_trainable,
)
from morphcli.shrink.config import ShrinkConfig
from morphcli.surgery.latency import latency_model
from morphcli.surgery.widths import multiplier_widths

UNITS = {"flops": "FLOPs", "params": "params", "latency": "ms"}

# A multiplier that leaves every removable group at its narrowest width.
NARROWEST = 1e-9
# With labels, the loss is (1 - w) x cross entropy + w x distillation from the input model:
# on the narrow Fashion-MNIST ResNet at 25% FLOPs (2 seeds) w = 0.5 lifted both MorphNet
# (+0.5 points) and the uniform baseline (+0.4) over cross entropy alone.
DISTILL_WEIGHT = 0.5
# The result must land in [BAND_LOW, 1] x target.
BAND_LOW = 0.97
# Replicas' consumer columns get zero-sum noise of this many weight standard deviations.
REPLICA_NOISE = 0.1


@dataclass
class Analysed:
    """A model with its channel graph and cost model."""

    model: Model
    cg: ChannelGraph
    cm: CostModel

    @classmethod
    def of(cls, model: Model) -> Analysed:
        cg = build_channel_graph(model)
        return cls(model, cg, build_cost_model(model, cg))

    def labels(self) -> list[str]:
        """A name per group that survives surgery: its first producer (or first tensor)."""
        return [g.producers[0] if g.producers else g.tensors[0] for g in self.cg.groups]

    def snapshot(self, step: str, widths: np.ndarray | None = None) -> dict:
        """A report step: each removable group's width, FLOPs and params at ``widths``
        (default: the model's own)."""
        widths = self.cg.widths() if widths is None else np.asarray(widths)
        labels = self.labels()
        return {
            "step": step,
            "widths": {
                labels[g.id]: int(widths[g.id])
                for g in self.cg.groups
                if g.prunable and g.producers
            },
            "flops": round(self.cm.flops(widths.astype(np.float64))),
            "params": round(self.cm.params(widths.astype(np.float64))),
        }


@dataclass
class Run:
    """What stays fixed during a run: the input model, the target, data, loss and how it
    trains (``execution``: the device, the processes, precision and loader workers)."""

    config: ShrinkConfig
    progress: Progress
    model: Model
    target: float
    data: DataSplit
    objective: Objective
    execution: Execution
    outputs: OutputPlan
    kind: ResourceKind
    resumed: ShrinkState | None = None
    latency_target: LatencyTarget | None = None

    @property
    def world(self) -> World:
        return self.execution.world

    @property
    def device(self) -> str:
        return self.execution.world.device

    @property
    def unit(self) -> str:
        return UNITS[self.config.resource]

    def amount(self, value: float) -> float:
        """A resource amount for the report: counts as integers, milliseconds as they are."""
        return value if self.latency_target is not None else round(value)

    def resource(self, analysed: Analysed) -> Resource:
        """The run's resource over an analysed model's groups."""
        return self.kind.bind(analysed.model, analysed.cg, analysed.cm)

    def snapshot(self, analysed: Analysed, step: str, widths: np.ndarray | None = None) -> dict:
        """``analysed.snapshot``, with the predicted latency (ms) for a latency target."""
        entry = analysed.snapshot(step, widths)
        if self.latency_target is not None:
            at = analysed.cg.widths() if widths is None else np.asarray(widths)
            entry["latency_ms"] = self.resource(analysed).value(at.astype(np.float64))
        return entry

    def module(self, proto: bytes) -> OnnxModule:
        model = model_from_proto(
            onnx.load_from_string(proto), self.config.model, self.input_shapes()
        )
        return OnnxModule.from_onnx(model).to(self.device)

    def input_shapes(self) -> dict[str, list[int]]:
        return {name: list(shape) for name, shape in self.model.input_shapes.items()}

    def analyse(self, proto: onnx.ModelProto) -> Analysed:
        """A model of this run, checked as the input is: the settings the input held as
        non-finite stay allowed, and outputs must be finite where the input's are."""
        model = model_from_proto(proto, self.config.model, self.input_shapes())
        model.non_finite, model.reference = self.model.non_finite, self.model.reference
        return Analysed.of(model)

    def evaluate(self, module: OnnxModule) -> dict[str, float | None]:
        loss, accuracy = evaluate(
            module, self.data.val, self.objective, self.config.learn.batch_size, self.device,
            execution=self.execution,
        )  # fmt: skip
        return {"loss": loss, "accuracy": accuracy}

    def checkpoint(self, state: ShrinkState) -> None:
        """Save ``state`` (the main process alone writes)."""
        if self.world.main:
            save_state(self.config.work_dir, self.config.fingerprint(), state)


def count_images(report: dict, phase: str, stats: EpochStats) -> None:
    """Add an epoch's images and seconds to the phase's throughput in the report."""
    seen = report["throughput"].setdefault(phase, {"images": 0, "seconds": 0.0})
    seen["images"] += stats.images
    seen["seconds"] += stats.seconds
    seen["images_per_s"] = seen["images"] / seen["seconds"] if seen["seconds"] else 0.0


def _execution(config: ShrinkConfig, world: World, data: DataSplit) -> Execution:
    """How to train: ``--precision`` checked against the device, the global batch against
    the number of processes, ``--workers`` or its default."""
    precision = Precision.for_device(config.precision, world.device)
    local_batch_size(config.learn.batch_size, world)
    workers = config.workers
    if workers is None:
        workers = default_workers(data.train, world.local_size)
    return Execution(world, precision, workers, config.sync_bn, config.compile)


def _kind(config: ShrinkConfig, analysed: Analysed, progress: Progress) -> ResourceKind:
    """The run's resource: FLOPs or params, or the input model's latency model (measured
    here unless cached)."""
    if config.resource != "latency":
        return resource_kind(config.resource)
    setup = replace(
        config.latency,
        on_step=config.latency.on_step or StepBar(progress.console, "latency model"),
        note=config.latency.note or progress.note,
    )
    return latency_model(analysed.model, analysed.cg, analysed.cm, setup)


def prepare(config: ShrinkConfig, progress: Progress, world: World | None = None) -> Run:
    """Load the model, check the outputs and the target against what can be reached, read
    the data (and the checkpoint to resume), settle how to train (in ``world``; default:
    this process alone on ``config.device``)."""
    world = world or World(device=resolve_device(config.device))
    model = load_model(config.model, config.input_shapes, probe=True)
    # Only the main process writes, so only it checks (and probes) the outputs.
    outputs = check_outputs(config, model) if world.main else OutputPlan(model.input_files())
    resumed = None
    if config.resume:
        resumed = world.from_main(lambda: load_state(config.work_dir, config.fingerprint()))
    if len(model.graph.inputs) != 1:
        raise MorphError(
            f"shrink trains models with one input; this one has {len(model.graph.inputs)}",
            file=config.model,
        )
    check_trainable(model)
    analysed = Analysed.of(model)
    flag = f"--target-{config.resource}"
    latency_target = parse_latency_target(config.target) if config.resource == "latency" else None
    kind = _kind(config, analysed, progress)
    resource = kind.bind(model, analysed.cg, analysed.cm)
    full = resource.value(analysed.cg.widths())
    if latency_target is not None:
        target = latency_target.of(full)
    else:
        target = parse_target(config.target, full, flag)
    narrowest = multiplier_widths(analysed.cg, NARROWEST, config.round_to)
    floor = resource.value(narrowest.astype(np.float64))
    if target < floor:
        raise MorphError(
            f"{flag} {human(target)} {UNITS[config.resource]} is below what the pinned "
            f"channels alone cost: {human(floor)} with one channel left in every removable "
            "group",
            file=config.model,
            exit_code=EXIT_BUDGET,
        )
    check_growth(analysed, resource, config, target, flag)
    if config.augment != "none" and not Path(config.data).is_dir():
        raise MorphError(
            f"--augment {config.augment} augments image folders; --data {config.data} is not one"
        )
    (shape,) = model.input_shapes.values()
    check_image_size(config, shape)
    images = ImageOptions(
        channels=shape[1],
        size=config.image_size or tuple(shape[2:4]),
        mean=config.mean,
        std=config.std,
        augment=config.augment,
    )
    data = split_data(config.data, config.val_data, tuple(shape[1:]), images, config.learn.seed)
    check_data_labels(config, model, data)
    execution = _execution(config, world, data)
    objective = _objective(config, data, model, world.device)
    progress.note(f"data: {data}; loss: {_loss_name(objective)}")
    return Run(
        config, progress, model, target, data, objective, execution, outputs, kind, resumed,
        latency_target,
    )  # fmt: skip


def _objective(config: ShrinkConfig, data: DataSplit, model: Model, device: str) -> Objective:
    """Cross entropy on labels mixed with distillation from the input model (by
    ``--distill-weight``, DISTILL_WEIGHT by default), cross entropy alone (``--loss ce`` or
    a weight of 0), or distillation alone (no labels, or ``--loss distill``)."""
    if config.loss == "ce" and not data.labelled:
        raise MorphError(f"--loss ce: --data {config.data} has no labels")
    weight = config.distill_weight
    if weight is not None and (config.loss != "auto" or not data.labelled):
        why = f"--loss {config.loss}" if config.loss != "auto" else f"--data {config.data}"
        raise MorphError(
            f"--distill-weight mixes cross entropy on labels with distillation: {why} "
            f"{'gives one loss' if config.loss != 'auto' else 'has no labels'}"
        )
    if config.loss == "distill" or not data.labelled:
        weight = 1.0
    elif config.loss == "ce":
        weight = 0.0
    elif weight is None:
        weight = DISTILL_WEIGHT
    if not weight:
        return Objective()
    teacher = OnnxModule.from_onnx(model).to(device)
    teacher.eval().requires_grad_(False)
    return Objective(teacher, config.temperature, weight)


def _loss_name(objective: Objective) -> str:
    if not objective.distills:
        return "cross entropy"
    if objective.distill_weight == 1.0:
        return "distillation"
    return f"cross entropy + distillation (weight {objective.distill_weight:g})"


def fresh_state(run: Run) -> ShrinkState:
    """Round 1 at epoch 0, with the input model measured for the report."""
    started = time.perf_counter()
    proto = run.model.to_proto().SerializeToString()
    report = {
        "model": run.config.model,
        "output": run.config.output,
        "resource": run.config.resource,
        "target": run.target if run.latency_target else round(run.target),
        "steps": [run.snapshot(Analysed.of(run.model), "input")],
        "validation": {"input": run.evaluate(run.module(proto))},
        "lambda": [],
        "rounds": [],
        "warnings": [],
        "time_s": {},
        "throughput": {},
    }
    report["time_s"]["prepare"] = time.perf_counter() - started
    return ShrinkState(LEARN, 1, 0, proto, report)
