"""MorphNet Algorithm 1: learn a structure with the penalty, drop dead channels, expand to
the budget, repeat, then fine-tune.

Each round trains ``task + lambda * penalty`` (``learn``), removes every group's dead channels
(surgery), then finds the largest uniform multiplier omega with ``cost(round(omega * alive))
<= target`` (``expand``'s search) and applies it: a group's alive channels first, then its
dead ones of most importance, revived with the scale they had at the round's start, then
Net2WiderNet replicas with symmetry-breaking noise in the consumers (``expansion_copies``).
After the last round the structure is fine-tuned without the penalty. State is
checkpointed after every epoch (``checkpoint``).

Under ``torchrun`` every process runs this same algorithm on its share of the data: alive
channels and lambda come from values averaged over processes, the structure after each
surgery is compared across processes (a difference stops the run), and only rank 0 writes
checkpoints, the model and the structure file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import onnx
import torch

from morphcli.errors import EXIT_BUDGET, MorphError
from morphcli.graph.channels import ChannelGraph
from morphcli.graph.load import read_proto
from morphcli.learn.checkpoint import BASELINE, DONE, FINETUNE, LEARN, ShrinkState
from morphcli.learn.distributed import World, structure_digest
from morphcli.learn.penalty import MorphNetPenalty
from morphcli.learn.progress import Progress
from morphcli.learn.strength import Strength
from morphcli.learn.train import DEADLINE, fit, recalibrate
from morphcli.outputs import save_model, write_atomic
from morphcli.report.format import human
from morphcli.resources.resource import Resource
from morphcli.shrink.baseline import compare_with_uniform, uniform_start
from morphcli.shrink.config import ShrinkConfig
from morphcli.shrink.run import (
    BAND_LOW,
    REPLICA_NOISE,
    Analysed,
    Run,
    count_images,
    fresh_state,
    prepare,
)
from morphcli.surgery.apply import Init, apply_copies, check_result
from morphcli.surgery.importance import class_importance
from morphcli.surgery.latency_target import AIM, Candidate, compare, latency_report, search_measured
from morphcli.surgery.latency_target import BAND as LATENCY_BAND
from morphcli.surgery.structure import structure_doc
from morphcli.surgery.widths import copies_for_width, multiplier_widths, target_multiplier, top_up

# lambda auto steers the alive cost to min(BELOW_TARGET x target, BELOW_START x the round's
# starting cost): below the target, so that the uniform expansion grows the learned
# structure back to it (Algorithm 1), and well below the start when the target is at or
# above it (a redistribution). How far below the target was measured on the narrow ResNet
# at 25% FLOPs (2 seeds, test accuracy, distillation weight 0.5): 0.7 -> 89.62%, 0.9 ->
# 89.92%, 1.0 -> 90.25%, uniform 90.07%; the channels learning removes beyond the target
# come back only as replicas or revived dead channels, which fine-tuning uses less well.
BELOW_TARGET = 0.9
BELOW_START = 0.7
# A round whose learning kept more than this share of its starting cost removed almost nothing.
LITTLE_LEARNED = 0.95
# Learning leaves every group at least this many channels. A tensor of one channel reads in
# ONNX as a broadcast operand, so at width 1 a group can join another in the shrunk model's
# channel graph and lose its identity (PAN/MobileNetV3: a decoder group learned down to one
# channel merged with a one-channel attention branch, and the expansion could not map it).
LEAST_WIDTH = 2
# Learning reached its goal when the alive cost came within this factor of it.
GOAL_TOLERANCE = 1.1


def _learning_goal(run: Run, start: float) -> float:
    """Where learning steers the alive cost (see BELOW_TARGET)."""
    return min(BELOW_TARGET * run.target, BELOW_START * start)


def width_floors(run: Run, start: Analysed, goal: float) -> np.ndarray:
    """Each group's least width in learning (``--width-floor F``): the widths of the uniform
    multiplier ``F * omega``, where ``omega`` alone brings the round's start to the learning
    goal (0 for groups that keep their width).

    Free learning (F = 0, the paper's) cut the high-resolution layers of the Fashion-MNIST
    MobileNetV2 seed at 25% FLOPs to 13 of 96 and 4 of 24 channels, and shrank the channels
    it kept toward zero on the way there (validation accuracy 78% after learning, test 2.1
    points below the uniform multiplier); those widths, given to the input's own weights and
    fine-tuned as long as uniform, were 2.6 points below it (1 seed), so the damage is in
    both. With the floor (F = 0.9) the learned models are at 88% and end 0.46 points above
    uniform (5 paired seeds, ``bench/bench_quality.py``; README).
    """
    floor = run.config.width_floor
    if floor <= 0:
        return np.zeros(len(start.cg.groups), dtype=np.int64)
    resource = run.resource(start)
    try:
        omega = target_multiplier(resource, start.cg, goal)
    except MorphError:  # the goal is out of uniform reach: learning alone may get there
        return np.zeros(len(start.cg.groups), dtype=np.int64)
    widths = multiplier_widths(start.cg, floor * omega)
    prunable = np.array([g.prunable for g in start.cg.groups], dtype=bool)
    return np.where(prunable, widths, 0).astype(np.int64)


def _initial_strength(run: Run, penalty: MorphNetPenalty) -> Strength:
    """A given lambda, or lambda auto calibrated to reach the goal by the deadline."""
    if run.config.strength != "auto":
        return Strength(float(run.config.strength))
    goal = _learning_goal(run, penalty.cost())
    learn = run.config.learn
    steps = learn.steps or learn.epochs * learn.steps_per_epoch(len(run.data.train))
    return Strength.calibrated(penalty, goal, learn.base_lr, max(1, round(DEADLINE * steps)))


def _train_learning(run: Run, state: ShrinkState, module, penalty, strength) -> None:
    """The round's structure-learning epochs, then, with lambda auto and while the alive cost
    is over the target, up to as many again (lambda keeps rising while the cost stalls)."""
    config, train = run.config, run.data.train
    epochs = config.learn.total_epochs(len(train))
    latest = {"optimizer": state.optimizer}
    label = f"round {state.round}/{config.rounds} learn"

    def on_epoch(stats, optimizer) -> None:
        latest["optimizer"] = optimizer.state_dict()
        count_images(state.report, f"round {state.round} learn", stats)
        run.checkpoint(
            ShrinkState(
                LEARN, state.round, stats.epoch + 1, module.to_onnx().SerializeToString(),
                state.report, latest["optimizer"], asdict(strength),
                scales=penalty.scales.tolist(), round_start=state.round_start,
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
            optimizer_state=latest["optimizer"], on_epoch=on_epoch, execution=run.execution,
        )  # fmt: skip
        epoch = schedule.total_epochs(len(train))


def learn_round(run: Run, state: ShrinkState) -> ShrinkState:
    """Train with the penalty, then remove dead channels and expand to the target at once."""
    config, report = run.config, state.report
    started = time.perf_counter()
    # A resumed round's checkpoint holds the model it began with besides the current one.
    state.round_start = state.round_start or state.proto
    module = run.module(state.proto)
    agree = run.world.mean if run.world.distributed else None
    initial = run.analyse(onnx.load_from_string(state.round_start))
    round_start = run.resource(initial).value(initial.cg.widths())
    floors = width_floors(run, initial, _learning_goal(run, round_start))
    penalty = MorphNetPenalty(
        module, run.kind, config.mode, agree=agree, scales=state.scales, least=floors
    )
    strength = Strength(**state.strength) if state.strength else _initial_strength(run, penalty)
    _train_learning(run, state, module, penalty, strength)
    recalibrate(
        module, run.data.train, config.learn.batch_size, run.device, config.learn.seed,
        execution=run.execution,
    )  # fmt: skip
    name = f"round {state.round}"
    report["validation"][f"{name} learned"] = run.evaluate(module)
    report["time_s"][f"{name} learn"] = time.perf_counter() - started
    started = time.perf_counter()

    alive = penalty.alive_masks()
    masks = keep_strongest(alive, penalty.vectors(), np.maximum(floors, LEAST_WIDTH))
    penalty.revive(alive, _constants(initial))
    report["lambda"].append(
        {"round": state.round, "initial": strength.initial, "final": strength.value}
    )
    trained = run.analyse(module.to_onnx())
    shrunk = run.analyse(
        apply_copies(trained.model, trained.cg, [m.astype(np.int64) for m in masks])
    )
    report["steps"].append(run.snapshot(shrunk, f"{name} shrunk"))
    resource = run.resource(shrunk)
    last = state.round == config.rounds
    init = Init(noise=REPLICA_NOISE, seed=config.learn.seed + state.round)

    def search(aim: float, low: float) -> Candidate:
        widths, omega = _expansion_widths(run, resource, shrunk.cg, aim, low)
        copies = expansion_copies(initial, trained, shrunk, masks, widths)
        proto = apply_copies(trained.model, trained.cg, copies, init)
        return Candidate(proto, resource.value(widths), (widths, omega))

    if run.latency_target is None:
        found = search(run.target, BAND_LOW)
    else:  # the middle of the band, and measured before the last fine-tuning
        low = LATENCY_BAND[0] / AIM
        if last:
            found, corrected = search_measured(
                lambda aim: search(aim, low), run.model.to_proto(), run.latency_target,
                AIM * run.target, run.model, config.latency,
            )  # fmt: skip
            report["latency_search"] = {"corrected": corrected}
        else:
            found = search(AIM * run.target, low)
    widths, omega = found.choice
    reached, proto = found.predicted, found.proto
    run.world.check_identical(f"the structure after {name}'s surgery", structure_digest(proto))
    expanded = run.snapshot(shrunk, f"{name} expanded", widths)
    expanded["multiplier"] = omega
    report["steps"].append(expanded)
    report["time_s"][f"{name} surgery"] = time.perf_counter() - started
    learned = resource.value(shrunk.cg.widths())
    amount = run.amount
    record = {
        "round": state.round, "start": amount(round_start), "goal": amount(strength.goal) or None,
        "width_floor": config.width_floor,
        "learned": amount(learned), "multiplier": omega, "expanded": amount(reached),
        "reached_goal": not strength.auto or learned <= GOAL_TOLERANCE * strength.goal,
    }  # fmt: skip
    report["rounds"].append(record)
    run.progress.note(
        f"{name}: learning kept {human(learned)} {run.unit} ({learned / round_start:.0%} of "
        f"{human(round_start)}; lambda {strength.value:.3g}); expanded x{omega:.3f} to "
        f"{human(reached)} {run.unit} ({reached / run.target:.1%} of the target)"
    )
    for warning in _round_warnings(record, run.unit):
        report["warnings"].append(warning)
        run.progress.note(f"warning: {warning}")
    next_state = ShrinkState(
        FINETUNE if last else LEARN, state.round if last else state.round + 1, 0,
        proto.SerializeToString(), report,
    )  # fmt: skip
    run.checkpoint(next_state)
    return next_state


def keep_strongest(
    masks: list[np.ndarray],
    vectors: list[torch.Tensor | None],
    least: int | np.ndarray = LEAST_WIDTH,
) -> list[np.ndarray]:
    """``masks`` with every group keeping at least ``least`` channels (one count for all
    groups or one per group; all it has, when it has fewer): its alive ones, then its dead
    ones of largest ``p``."""
    kept = []
    least = np.broadcast_to(np.asarray(least), (len(masks),))
    for mask, p, wanted in zip(masks, vectors, least, strict=True):
        mask = mask.copy()
        short = min(int(wanted), len(mask)) - int(mask.sum())
        if short > 0 and p is not None:
            order = np.argsort(-p.detach().double().cpu().numpy(), kind="stable")
            mask[order[~mask[order]][:short]] = True
        kept.append(mask)
    return kept


def _constants(analysed: Analysed) -> Callable[[str], torch.Tensor]:
    """The constants of ``analysed``'s graph by name, as tensors."""
    tensors = analysed.model.graph.tensors()
    return lambda name: torch.tensor(np.asarray(tensors[name].values))


def _expansion_widths(
    run: Run, resource: Resource, cg: ChannelGraph, aim: float, low: float
) -> tuple[np.ndarray, float]:
    """The shrunk model's widths at the largest uniform multiplier within ``aim``, topped up
    to at least ``low * aim``, and the multiplier.

    Raises:
        MorphError: exit code 1 when no structure reaches ``low * aim`` (FLOPs, params; a
            latency target is judged by measuring the result instead).
    """
    config = run.config
    omega = target_multiplier(resource, cg, aim, config.round_to)
    widths = multiplier_widths(cg, omega, config.round_to)
    widths = top_up(resource, cg, widths, omega * cg.widths(), aim, config.round_to, low)
    reached = resource.value(widths)
    if reached < low * aim and run.latency_target is None:
        raise MorphError(
            f"cannot meet --target-{config.resource} {human(run.target)}: the closest "
            f"structure reached {human(reached)} ({reached / run.target:.1%} of the target) "
            f"with --round-to {config.round_to}",
            exit_code=EXIT_BUDGET,
        )
    return widths, omega


def expansion_copies(
    start: Analysed,
    trained: Analysed,
    shrunk: Analysed,
    masks: list[np.ndarray],
    widths: np.ndarray,
) -> list[np.ndarray]:
    """Copy counts on the trained model that give each group its expanded width (``widths``,
    per group of the ``shrunk`` model): its alive channels, then its dead channels of most
    importance in the round's ``start`` model, then replicas (the most important alive
    channels first) where the group grows past its full width.

    The dead channels it keeps come back with the scale (or filter) they had at the round's
    start (``learn_round`` revives them before surgery, ``MorphNetPenalty.revive``), so the
    expansion adds trained features, not only copies of the survivors (at equal budget,
    replicas alone cost about 0.6 points on the narrow ResNet at 25% FLOPs). Kept as the
    constants learning left them, they had to be learned again in fine-tuning; revived,
    MorphNet - the constants at 25% FLOPs, 5 paired seeds: VGG +0.18 +- 0.14, 2x ResNet +0.24
    +- 0.12, narrow ResNet +0.27 +- 0.34, MobileNetV2 -0.01 +- 0.17 (``bench_quality.py``).
    """
    by_producers = {frozenset(g.producers): g.id for g in shrunk.cg.groups if g.producers}
    learned = class_importance(trained.model, trained.cg)
    before = class_importance(start.model, start.cg)
    copies = []
    for group, mask, now, then in zip(trained.cg.groups, masks, learned, before, strict=True):
        if not group.prunable:
            copies.append(np.ones(group.width, dtype=np.int64))
            continue
        width = int(widths[by_producers[frozenset(group.producers)]])
        rank = np.where(mask, 2.0 + now, then)  # alive first (by their learned importance)
        copies.append(copies_for_width(rank, width))
    return copies


def _round_warnings(record: dict, unit: str) -> list[str]:
    """What a user should know about a round: learning that removed (almost) nothing, or
    that stopped over the target, so that a multiplier below 1 did the rest."""
    kept = record["learned"] / record["start"]
    if kept > LITTLE_LEARNED:
        return [
            f"round {record['round']}: learning removed almost nothing ({kept:.0%} of the "
            f"{unit} stayed alive), so the result is mostly the uniform multiplier "
            f"x{record['multiplier']:.3f}: train longer (--epochs) or raise --lambda"
        ]
    if record["multiplier"] < 1.0:
        return [
            f"round {record['round']}: learning stopped at {kept:.0%} of the {unit}, over the "
            f"target; the multiplier x{record['multiplier']:.3f} did the rest: train longer "
            "(--epochs) for a structure learned all the way"
        ]
    return []


def reduction(report: dict, final: float) -> dict:
    """How much of the reduction from the input to ``final`` learning did (first round):
    ``by_learning`` is (input - learned) / (input - final), at most 1 (learning went below
    the final cost and the multiplier grew the structure back)."""
    first = report["rounds"][0]
    start, learned = first["start"], first["learned"]
    removed = start - final
    share = 1.0 if removed <= 0 else min(1.0, max(0.0, (start - learned) / removed))
    return {
        "learned_fraction": learned / start,
        "final_fraction": final / start,
        "multiplier": first["multiplier"],
        "by_learning": share,
    }


def finetune(run: Run, state: ShrinkState) -> ShrinkState:
    """Fine-tune the final structure without the penalty (cosine learning rate decay)."""
    config, report = run.config, state.report
    started = time.perf_counter()
    module = run.module(state.proto)
    schedule = replace(config.learn, epochs=config.finetune_epochs, steps=None, cosine=True)
    after = BASELINE if config.baseline else DONE

    def on_epoch(stats, optimizer) -> None:
        count_images(report, "finetune", stats)
        proto = module.to_onnx().SerializeToString()
        run.checkpoint(
            ShrinkState(FINETUNE, state.round, stats.epoch + 1, proto, report,
                        optimizer.state_dict())
        )  # fmt: skip

    fit(
        module, run.data.train, run.objective, schedule, run.device, run.progress, "fine-tune",
        start_epoch=state.epoch, optimizer_state=state.optimizer, on_epoch=on_epoch,
        execution=run.execution,
    )  # fmt: skip
    report["validation"]["final"] = run.evaluate(module)
    report["time_s"]["finetune"] = time.perf_counter() - started
    result = module.to_onnx().SerializeToString()
    next_state = ShrinkState(after, state.round, 0, result, report, result=result)
    if after == BASELINE:
        next_state.proto = uniform_start(run).SerializeToString()
        run.checkpoint(next_state)
    return next_state


def run_shrink(config: ShrinkConfig, progress: Progress, world: World | None = None) -> dict:
    """Algorithm 1 end to end; writes ``config.output`` (and ``config.report``; rank 0 of
    ``world`` alone) and returns the report. A run that fails removes what it created (an
    interrupted one keeps its checkpoint for ``--resume``); the model is written only if it
    passes ``check_result``.

    Raises:
        MorphError: bad input (exit 2), or a target that cannot be met or training that
            diverged (exit 1).
    """
    run = prepare(config, progress, world)
    # Ranks draw different dropout masks; everything structural is seeded on its own.
    torch.manual_seed(config.learn.seed + run.world.rank)
    with run.outputs:
        if run.resumed is not None:
            state = run.resumed
            progress.note(f"resuming from {state}")
        else:
            state = fresh_state(run)
            run.checkpoint(state)
        state.report["training"] = run.execution.describe()
        progress.note(f"training: {run.execution}")
        while state.phase == LEARN:
            state = learn_round(run, state)
        if state.phase == FINETUNE:
            state = finetune(run, state)
        if state.phase == BASELINE:
            state = compare_with_uniform(run, state)
        proto = onnx.load_from_string(state.result)
        report = state.report
        final = run.analyse(proto)
        report["steps"].append(run.snapshot(final, "final"))
        reached = run.resource(final).value(final.cg.widths())
        report["reduction"] = reduction(report, reached)
        report["time_s"]["total"] = sum(report["time_s"].values())
        if run.latency_target is None:
            report["reached"] = round(reached)
            report["fraction_of_target"] = reached / run.target
            report["met"] = BAND_LOW * run.target <= reached <= run.target
            if not report["met"]:
                raise MorphError(
                    f"the result costs {human(reached)} {run.unit}, {reached / run.target:.1%} "
                    f"of the target {human(run.target)}",
                    exit_code=EXIT_BUDGET,
                )
        if not run.world.main:
            return report
        check_result(proto, run.model)
        save_model(proto, config.output)
        if run.latency_target is not None:
            _measure_latency(run, report, reached)
        if config.export_structure:
            _write_json(config.export_structure, structure_doc(final.model, final.cg))
        if config.report:
            _write_json(config.report, report)
    return report


def _measure_latency(run: Run, report: dict, predicted: float) -> None:
    """Measure the written file against the input model: the report gets its ``latency``
    section, and ``met`` says whether it landed in the band (the file is kept either way, to
    be inspected or measured again; the command exits 1 on a miss)."""
    config = run.config
    measured = compare(run.model.to_proto(), read_proto(config.output), run.model, config.latency)
    corrected = report.pop("latency_search", {}).get("corrected", False)
    before = report["steps"][0]["latency_ms"]
    section = latency_report(run.latency_target, run.kind, (before, predicted), measured, corrected)
    report["latency"] = section
    report["reached"] = measured.after_ms
    report["fraction_of_target"] = section["fraction_of_target"]
    report["met"] = section["met"]


def _write_json(path: str, doc: dict) -> None:
    text = (json.dumps(doc, indent=2) + "\n").encode()
    write_atomic(path, lambda stream: stream.write(text))
