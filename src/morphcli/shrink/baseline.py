"""``shrink --baseline uniform``: the same training budget spent on the input model's
uniform-multiplier structure (what ``expand --target-flops`` gives), fine-tuned with the same
loss and schedule; the better of the two on the validation data is written, and the report
gives both, so a user sees what the learned structure bought on their own data."""

from __future__ import annotations

import time
from dataclasses import replace

import onnx

from morphcli.learn.checkpoint import BASELINE, DONE, ShrinkState
from morphcli.learn.train import fit
from morphcli.shrink.run import BAND_LOW, REPLICA_NOISE, Analysed, Run, count_images
from morphcli.surgery.apply import Init, apply_copies
from morphcli.surgery.importance import class_importance
from morphcli.surgery.widths import copies_for_widths, multiplier_widths, target_multiplier, top_up


def uniform_start(run: Run) -> onnx.ModelProto:
    """The input model at the target with one width multiplier (most important channels
    kept, replicas where it grows), landing in the same band as the learned structure."""
    config, analysed = run.config, Analysed.of(run.model)
    cg = analysed.cg
    resource = run.resource(analysed)
    omega = target_multiplier(resource, cg, run.target, config.round_to)
    widths = multiplier_widths(cg, omega, config.round_to)
    widths = top_up(
        resource, cg, widths, omega * cg.widths(), run.target, config.round_to, BAND_LOW
    )
    copies = copies_for_widths(cg, class_importance(run.model, cg), widths)
    init = Init(noise=REPLICA_NOISE, seed=config.learn.seed)
    return apply_copies(run.model, cg, copies, init)


def budget_epochs(run: Run) -> int:
    """The epochs MorphNet trained: its learning epochs in every round and fine-tuning."""
    config = run.config
    learn = config.learn.total_epochs(len(run.data.train))
    return learn * config.rounds + config.finetune_epochs


def _better(candidate: dict, incumbent: dict) -> bool:
    """Higher validation accuracy with labels, lower validation loss without; ties keep the
    incumbent (the learned structure)."""
    if candidate["accuracy"] is not None and incumbent["accuracy"] is not None:
        return candidate["accuracy"] > incumbent["accuracy"]
    return candidate["loss"] < incumbent["loss"]


def compare_with_uniform(run: Run, state: ShrinkState) -> ShrinkState:
    """Fine-tune the uniform structure (``state.proto``) for MorphNet's budget, then keep the
    better of it and MorphNet's result (``state.result``)."""
    config, report = run.config, state.report
    started = time.perf_counter()
    module = run.module(state.proto)
    epochs = budget_epochs(run)
    schedule = replace(config.learn, epochs=epochs, steps=None, cosine=True)

    def on_epoch(stats, optimizer) -> None:
        count_images(report, "baseline", stats)
        run.checkpoint(
            ShrinkState(
                BASELINE, state.round, stats.epoch + 1, module.to_onnx().SerializeToString(),
                report, optimizer.state_dict(), result=state.result,
            )
        )  # fmt: skip

    fit(
        module, run.data.train, run.objective, schedule, run.device, run.progress,
        "uniform baseline", start_epoch=state.epoch, optimizer_state=state.optimizer,
        on_epoch=on_epoch, execution=run.execution,
    )  # fmt: skip
    uniform = module.to_onnx()
    analysed = run.analyse(uniform)
    cost = run.resource(analysed).value(analysed.cg.widths())
    validation = run.evaluate(module)
    chosen = "uniform" if _better(validation, report["validation"]["final"]) else "morphnet"
    report["baseline"] = {
        "method": "uniform",
        "epochs": epochs,
        "validation": validation,
        run.unit.lower(): cost if run.latency_target else round(cost),
        "chosen": chosen,
    }
    report["time_s"]["baseline"] = time.perf_counter() - started
    run.progress.note(
        f"uniform baseline: {_quality(validation)} against MorphNet's "
        f"{_quality(report['validation']['final'])}; writing {chosen}'s result"
    )
    result = uniform.SerializeToString() if chosen == "uniform" else state.result
    return ShrinkState(DONE, state.round, 0, result, report, result=result)


def _quality(entry: dict) -> str:
    if entry["accuracy"] is not None:
        return f"validation accuracy {entry['accuracy']:.2%}"
    return f"validation loss {entry['loss']:.4f}"
