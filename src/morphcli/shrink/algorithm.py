"""MorphNet Algorithm 1: learn a structure with the penalty, drop dead channels, expand to
the budget, repeat, then fine-tune.

Each round trains ``task + lambda * penalty`` (``learn``), removes every group's dead channels
(surgery), then finds the largest uniform multiplier omega with ``cost(round(omega * alive))
<= target`` (``expand``'s search) and applies it: the most important channels first,
Net2WiderNet replicas with symmetry-breaking noise in the consumers, so the function is
unchanged. After the last round the structure is fine-tuned without the penalty. State is
checkpointed after every epoch (``checkpoint``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx
import torch

from morphcli.channels import ChannelGraph, build_channel_graph
from morphcli.checkpoint import FINETUNE, LEARN, ShrinkState, file_digest, load_state, save_state
from morphcli.cost import CostModel, build_cost_model, parse_target
from morphcli.data import DataSplit, ImageOptions, split_data
from morphcli.errors import EXIT_BUDGET, MorphError
from morphcli.expand import multiplier_widths, target_multiplier
from morphcli.importance import class_importance, copies_for_widths
from morphcli.model import Model, load_model, model_from_proto, save_model
from morphcli.penalty import MorphNetPenalty
from morphcli.progress import Progress
from morphcli.report import human
from morphcli.resize import check_output_path
from morphcli.surgery import Init, apply_copies
from morphcli.train import Objective, Schedule, Strength, evaluate, fit, recalibrate
from morphcli.wrapper import OnnxModule

# The result must land in [BAND_LOW, 1] x target.
BAND_LOW = 0.97
# lambda auto: LAMBDA_SCALE / (the round's starting cost), steered so that the alive cost
# reaches min(target, SHRINK_GOAL x starting cost): the target itself when shrinking, and a
# smaller structure to grow back from when the target is the same cost or more.
LAMBDA_SCALE = 1.0
SHRINK_GOAL = 0.7
# A multiplier that leaves every removable group at its narrowest width.
NARROWEST = 1e-9
# Replicas' consumer columns get zero-sum noise of this many weight standard deviations.
REPLICA_NOISE = 0.1


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
    loss: str = "auto"
    temperature: float = 1.0
    device: str = "cpu"
    work_dir: str = ""
    resume: bool = False
    input_shapes: dict[str, list[int]] | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def fingerprint(self) -> dict:
        return {
            "model": file_digest(self.model),
            "target": f"{self.resource} {self.target}",
            "data": self.data,
            "rounds": self.rounds,
        }


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


def top_up(
    cm: CostModel,
    cg: ChannelGraph,
    resource: str,
    widths: np.ndarray,
    share: np.ndarray,
    target: float,
    step: int,
) -> np.ndarray:
    """Widen removable groups by ``step`` channels, the one furthest under its ``share``
    first, while the cost is under ``BAND_LOW * target`` and the next step still fits.

    The uniform multiplier's rounding leaves the cost in steps; this closes the gap to the
    band without leaving the uniform shape by more than one step per group.
    """
    widths = widths.copy()
    prunable = cg.prunable_mask()
    while cm.resource(resource, widths) < BAND_LOW * target:
        ratio = np.where(prunable, widths / np.maximum(share, 1e-9), np.inf)
        for gid in np.argsort(ratio, kind="stable")[: int(prunable.sum())]:
            trial = widths.copy()
            trial[gid] += step
            if cm.resource(resource, trial) <= target:
                widths = trial
                break
        else:
            break
    return widths


@dataclass
class Run:
    """What stays fixed during a run: the input model, the target, data, loss and device."""

    config: ShrinkConfig
    progress: Progress
    model: Model
    target: float
    data: DataSplit
    objective: Objective
    device: str

    @property
    def unit(self) -> str:
        return "FLOPs" if self.config.resource == "flops" else "params"

    def module(self, proto: bytes) -> OnnxModule:
        model = model_from_proto(
            onnx.load_from_string(proto), self.config.model, self.input_shapes()
        )
        return OnnxModule.from_onnx(model).to(self.device)

    def input_shapes(self) -> dict[str, list[int]]:
        return {name: list(shape) for name, shape in self.model.input_shapes.items()}

    def analyse(self, proto: onnx.ModelProto) -> Analysed:
        return Analysed.of(model_from_proto(proto, self.config.model, self.input_shapes()))

    def evaluate(self, module: OnnxModule) -> dict[str, float | None]:
        loss, accuracy = evaluate(
            module, self.data.val, self.objective, self.config.learn.batch_size, self.device
        )
        return {"loss": loss, "accuracy": accuracy}

    def checkpoint(self, state: ShrinkState) -> None:
        save_state(self.config.work_dir, self.config.fingerprint(), state)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MorphError("--device cuda: no CUDA device is available")
    return device


def prepare(config: ShrinkConfig, progress: Progress) -> Run:
    """Load the model, check the target against what can be reached, read the data."""
    check_output_path(config.model, config.output)
    model = load_model(config.model, config.input_shapes)
    if len(model.graph.inputs) != 1:
        raise MorphError(
            f"shrink trains models with one input; this one has {len(model.graph.inputs)}",
            file=config.model,
        )
    analysed = Analysed.of(model)
    flag = f"--target-{config.resource}"
    target = parse_target(config.target, analysed.cm.resource(config.resource), flag)
    narrowest = multiplier_widths(analysed.cg, NARROWEST, config.round_to)
    floor = analysed.cm.resource(config.resource, narrowest.astype(np.float64))
    if target < floor:
        raise MorphError(
            f"{flag} {human(target)} is below what the pinned channels alone cost: "
            f"{human(floor)} with one channel left in every removable group",
            file=config.model,
            exit_code=EXIT_BUDGET,
        )
    (shape,) = model.input_shapes.values()
    images = ImageOptions(
        channels=shape[1],
        size=config.image_size or tuple(shape[2:4]),
        mean=config.mean,
        std=config.std,
    )
    data = split_data(config.data, config.val_data, tuple(shape[1:]), images, config.learn.seed)
    if config.loss == "ce" and not data.labelled:
        raise MorphError(f"--loss ce: --data {config.data} has no labels")
    device = resolve_device(config.device)
    teacher = None
    if config.loss == "distill" or (config.loss == "auto" and not data.labelled):
        teacher = OnnxModule.from_onnx(model).to(device).eval().requires_grad_(False)
    progress.note(f"data: {data}; loss: {'distillation' if teacher else 'cross entropy'}")
    return Run(
        config, progress, model, target, data, Objective(teacher, config.temperature), device
    )


def fresh_state(run: Run) -> ShrinkState:
    """Round 1 at epoch 0, with the input model measured for the report."""
    started = time.perf_counter()
    proto = run.model.to_proto().SerializeToString()
    report = {
        "model": run.config.model,
        "output": run.config.output,
        "resource": run.config.resource,
        "target": round(run.target),
        "steps": [Analysed.of(run.model).snapshot("input")],
        "validation": {"input": run.evaluate(run.module(proto))},
        "lambda": [],
        "time_s": {},
    }
    report["time_s"]["prepare"] = time.perf_counter() - started
    return ShrinkState(LEARN, 1, 0, proto, report)


def _initial_strength(run: Run, start_cost: float) -> Strength:
    if run.config.strength == "auto":
        goal = min(run.target, SHRINK_GOAL * start_cost)
        return Strength(LAMBDA_SCALE / start_cost, auto=True, goal=goal)
    return Strength(float(run.config.strength))


def _train_learning(run: Run, state: ShrinkState, module, penalty, strength) -> None:
    """The round's structure-learning epochs, then, with lambda auto and while the alive cost
    is over the target, up to as many again (lambda keeps rising while the cost stalls)."""
    config, train = run.config, run.data.train
    epochs = config.learn.total_epochs(len(train))
    latest = {"optimizer": state.optimizer}
    label = f"round {state.round}/{config.rounds} learn"

    def on_epoch(stats, optimizer) -> None:
        latest["optimizer"] = optimizer.state_dict()
        run.checkpoint(
            ShrinkState(
                LEARN, state.round, stats.epoch + 1, module.to_onnx().SerializeToString(),
                state.report, latest["optimizer"], asdict(strength),
            )
        )  # fmt: skip

    epoch = state.epoch
    while True:
        if epoch < epochs:
            schedule = config.learn
        elif strength.auto and epoch < 2 * epochs and penalty.cost() > run.target:
            schedule = replace(config.learn, epochs=epoch + 1, steps=None)
            run.progress.note(
                f"alive {human(penalty.cost())} {run.unit} is still over the target: "
                f"one more epoch (lambda {strength.value:.3g}, steered toward the target)"
            )
        else:
            return
        fit(
            module, train, run.objective, schedule, run.device, run.progress, label,
            penalty=penalty, strength=strength, start_epoch=epoch,
            optimizer_state=latest["optimizer"], on_epoch=on_epoch,
        )  # fmt: skip
        epoch = schedule.total_epochs(len(train))


def learn_round(run: Run, state: ShrinkState) -> ShrinkState:
    """Train with the penalty, then remove dead channels and expand to the target at once."""
    config, report = run.config, state.report
    started = time.perf_counter()
    module = run.module(state.proto)
    penalty = MorphNetPenalty(module, config.resource, config.mode)
    start_cost = penalty.cost_model.resource(config.resource)
    strength = Strength(**state.strength) if state.strength else _initial_strength(run, start_cost)
    _train_learning(run, state, module, penalty, strength)
    recalibrate(module, run.data.train, config.learn.batch_size, run.device, config.learn.seed)
    name = f"round {state.round}"
    report["validation"][f"{name} learned"] = run.evaluate(module)
    report["time_s"][f"{name} learn"] = time.perf_counter() - started
    started = time.perf_counter()

    masks = penalty.alive_masks()
    vectors = penalty.vectors()
    for mask, p in zip(masks, vectors, strict=True):
        if not mask.any():  # a group keeps at least its most important channel
            mask[int(torch.argmax(p))] = True
    report["lambda"].append(
        {"round": state.round, "initial": strength.initial, "final": strength.value}
    )
    trained = run.analyse(module.to_onnx())
    shrunk = run.analyse(
        apply_copies(trained.model, trained.cg, [m.astype(np.int64) for m in masks])
    )
    report["steps"].append(shrunk.snapshot(f"{name} shrunk"))
    omega = target_multiplier(shrunk.cm, shrunk.cg, config.resource, run.target, config.round_to)
    widths = multiplier_widths(shrunk.cg, omega, config.round_to)
    share = omega * shrunk.cg.widths()
    widths = top_up(
        shrunk.cm, shrunk.cg, config.resource, widths, share, run.target, config.round_to
    )
    reached = shrunk.cm.resource(config.resource, widths)
    if reached < BAND_LOW * run.target:
        raise MorphError(
            f"cannot meet --target-{config.resource} {human(run.target)}: the closest "
            f"structure reached {human(reached)} ({reached / run.target:.1%} of the target) "
            f"with --round-to {config.round_to}",
            exit_code=EXIT_BUDGET,
        )
    copies = copies_for_widths(shrunk.cg, class_importance(shrunk.model, shrunk.cg), widths)
    init = Init(noise=REPLICA_NOISE, seed=config.learn.seed + state.round)
    proto = apply_copies(shrunk.model, shrunk.cg, copies, init)
    expanded = shrunk.snapshot(f"{name} expanded", widths)
    expanded["multiplier"] = omega
    report["steps"].append(expanded)
    report["time_s"][f"{name} surgery"] = time.perf_counter() - started
    run.progress.note(
        f"{name}: alive {human(shrunk.cm.resource(config.resource))} {run.unit} "
        f"(lambda {strength.value:.3g}); expanded x{omega:.3f} to {human(reached)} {run.unit} "
        f"({reached / run.target:.1%} of the target)"
    )
    last = state.round == config.rounds
    next_state = ShrinkState(
        FINETUNE if last else LEARN, state.round if last else state.round + 1, 0,
        proto.SerializeToString(), report,
    )  # fmt: skip
    run.checkpoint(next_state)
    return next_state


def finetune(run: Run, state: ShrinkState) -> onnx.ModelProto:
    """Fine-tune the final structure without the penalty (cosine learning rate decay)."""
    config, report = run.config, state.report
    started = time.perf_counter()
    module = run.module(state.proto)
    schedule = replace(config.learn, epochs=config.finetune_epochs, steps=None, cosine=True)

    def on_epoch(stats, optimizer) -> None:
        proto = module.to_onnx().SerializeToString()
        run.checkpoint(
            ShrinkState(FINETUNE, state.round, stats.epoch + 1, proto, report,
                        optimizer.state_dict())
        )  # fmt: skip

    fit(
        module, run.data.train, run.objective, schedule, run.device, run.progress, "fine-tune",
        start_epoch=state.epoch, optimizer_state=state.optimizer, on_epoch=on_epoch,
    )  # fmt: skip
    report["validation"]["final"] = run.evaluate(module)
    report["time_s"]["finetune"] = time.perf_counter() - started
    return module.to_onnx()


def run_shrink(config: ShrinkConfig, progress: Progress) -> dict:
    """Algorithm 1 end to end; writes ``config.output`` and returns the report.

    Raises:
        MorphError: bad input (exit 2), or a target that cannot be met (exit 1).
    """
    torch.manual_seed(config.learn.seed)
    run = prepare(config, progress)
    if config.resume:
        state = load_state(config.work_dir, config.fingerprint())
        progress.note(f"resuming from {state}")
    else:
        state = fresh_state(run)
        run.checkpoint(state)
    while state.phase == LEARN:
        state = learn_round(run, state)
    proto = finetune(run, state)
    report = state.report
    final = run.analyse(proto)
    report["steps"].append(final.snapshot("final"))
    reached = final.cm.resource(config.resource)
    report["reached"] = round(reached)
    report["fraction_of_target"] = reached / run.target
    report["met"] = BAND_LOW * run.target <= reached <= run.target
    report["time_s"]["total"] = sum(report["time_s"].values())
    if not report["met"]:
        raise MorphError(
            f"the result costs {human(reached)} {run.unit}, {reached / run.target:.1%} of the "
            f"target {human(run.target)}",
            exit_code=EXIT_BUDGET,
        )
    save_model(proto, config.output)
    return report
