"""``morphnet shrink``: MorphNet's Algorithm 1 to a FLOPs, parameter or latency budget."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from morphcli.cli.common import (
    exit_if_latency_missed,
    handle_errors,
    input_shapes_option,
    latency_options,
    latency_setup,
    one_target,
    parse_input_shapes,
    print_error,
    print_json,
    stderr,
    stdout,
)
from morphcli.cli.options import ROUND_TO, SEED, Finite, ImageSize, Numbers, Strength, Target
from morphcli.errors import MorphError

if TYPE_CHECKING:
    from morphcli.shrink.config import ShrinkConfig


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The ONNX file to write.")
@click.option("--target-flops", type=Target(), help="FLOPs budget: 50%, 100%, 1.2G, 300M ...")
@click.option("--target-params", type=Target(), help="Parameter budget, written the same way.")
@click.option(
    "--target-latency",
    metavar="T",
    help="Latency budget, measured with onnxruntime: 50% of the input's, or 3ms.",
)
@latency_options
@click.option(
    "--data",
    required=True,
    metavar="D",
    help="Training data: an .npz (x, y, x_val, y_val), an image folder with class "
    "subfolders, or module:function returning a torch Dataset.",
)
@click.option("--val-data", metavar="D", help="Validation data, same forms (default: held out).")
@click.option(
    "--rounds", default=1, show_default=True, type=click.IntRange(1), help="Shrink-expand rounds."
)
@click.option(
    "--epochs",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Structure-learning epochs per round.",
)
@click.option(
    "--steps",
    type=click.IntRange(1),
    help="Structure-learning steps per round (instead of --epochs).",
)
@click.option(
    "--finetune-epochs",
    default=3,
    show_default=True,
    type=click.IntRange(0),
    help="Fine-tuning epochs of the final structure, without the penalty.",
)
@click.option(
    "--round-to",
    default=1,
    show_default=True,
    type=ROUND_TO,
    help="Make every removable width a multiple of N.",
)
@click.option(
    "--lambda",
    "strength",
    default="auto",
    show_default=True,
    type=Strength(),
    help="Penalty strength: auto (calibrated from the cost, raised while the alive "
    "cost stalls) or a number.",
)
@click.option(
    "--penalty",
    "mode",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "gamma", "group-lasso"]),
    help="Channel penalty: BN scales, filter norms, or auto (BN where it follows).",
)
@click.option(
    "--width-floor",
    type=Finite(min=0, max=1),
    help="Learning keeps every layer at least F x the width one uniform multiplier would "
    "give it. Default 0.9; 0: free (the paper's MorphNet, down to 2 channels a layer).",
)
@click.option(
    "--loss",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "ce", "distill"]),
    help="auto: labels mixed with distillation (--distill-weight), or distillation alone "
    "without labels; ce: labels alone; distill: distillation alone.",
)
@click.option(
    "--temperature",
    default=1.0,
    show_default=True,
    type=Finite(min=0, min_open=True),
    help="Distillation temperature for logits.",
)
@click.option(
    "--distill-weight",
    type=Finite(min=0, max=1),
    help="With labels: the share of distillation from the input model in the loss "
    "((1 - W) x cross entropy + W x KL on logits). Default 0.5; 0: labels alone.",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option(
    "--optimizer",
    default="sgd",
    show_default=True,
    type=click.Choice(["sgd", "adam"]),
    help="SGD with momentum 0.9, or Adam.",
)
@click.option(
    "--lr",
    type=Finite(min=0, min_open=True),
    help="Learning rate (default 0.01 for SGD, 0.001 for Adam).",
)
@click.option("--image-size", type=ImageSize(), help="Resize folder images (default: the input's).")
@click.option("--mean", type=Numbers(), help="Per-channel mean subtracted from images (M[,M,M]).")
@click.option("--std", type=Numbers(positive=True), help="Per-channel std dividing images.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option(
    "--threads", type=click.IntRange(1, 1024), help="CPU threads for torch (per process)."
)
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    type=click.Choice(["fp32", "bf16", "fp16"]),
    help="Training forward precision (autocast; fp16 with loss scaling, CUDA only). The "
    "penalty, BN statistics and the written weights stay fp32.",
)
@click.option(
    "--workers",
    type=click.IntRange(0),
    help="Data loader processes per training process (default: from the CPU count for "
    "images and module:function data; 0 for .npz arrays).",
)
@click.option(
    "--augment",
    default="none",
    show_default=True,
    type=click.Choice(["none", "flip", "crop-flip"]),
    help="Training augmentation of folder images: horizontal flip, or random resized crop "
    "and flip (validation: resize and center crop).",
)
@click.option(
    "--sync-bn",
    is_flag=True,
    help="Under torchrun: normalise training batches with the statistics of the whole "
    "global batch, not each process's share.",
)
@click.option("--compile", "compile_", is_flag=True, help="Train through torch.compile.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    help="Where checkpoints go (default: OUTPUT.work).",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --work-dir.")
@click.option(
    "--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here."
)
@click.option(
    "--baseline",
    type=click.Choice(["uniform"]),
    help="Also fine-tune the uniform-multiplier structure with the same budget, keep the "
    "better on the validation data, and report both.",
)
@click.option(
    "--export-structure",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Also write the result's structure (per-group widths by layer) as JSON, for "
    "morphnet apply.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@input_shapes_option
@handle_errors
def shrink(model_path: str, output: str, **flags: Any) -> None:
    """MorphNet: learn where channels matter, then fit the model to a FLOPs, params or
    latency budget."""
    import torch

    from morphcli.learn.distributed import start_world
    from morphcli.learn.progress import Progress
    from morphcli.report.shrink import render_shrink
    from morphcli.shrink.algorithm import run_shrink
    from morphcli.shrink.run import UNITS

    config = config_from_flags(model_path, output, flags)
    if flags["threads"]:
        torch.set_num_threads(flags["threads"])
    world = start_world(config.device)
    # Under torchrun only rank 0 shows progress and writes.
    unit = UNITS[config.resource]
    try:
        progress = (
            Progress(stderr, unit) if world.main else Progress(Console(quiet=True), live=False)
        )
        report = run_shrink(config, progress, world)
    except KeyboardInterrupt:
        if world.main:
            print_error(
                f"the last checkpoint is in {config.work_dir}; continue with --resume",
                "interrupted",
            )
        sys.exit(130)
    finally:
        world.close()
    if not world.main:
        return
    if flags["as_json"]:
        print_json(report)
    else:
        render_shrink(report, stdout)
    exit_if_latency_missed(report)


def config_from_flags(model_path: str, output: str, flags: dict[str, Any]) -> ShrinkConfig:
    """The run's configuration from the command's flags (values checked here or by click)."""
    from morphcli.learn.checkpoint import default_work_dir
    from morphcli.learn.train import Schedule
    from morphcli.shrink.config import WIDTH_FLOOR, ShrinkConfig

    target = one_target(flags["target_flops"], flags["target_params"], flags["target_latency"])
    if target is None:
        raise MorphError("give one of --target-flops, --target-params or --target-latency")
    return ShrinkConfig(
        model=model_path,
        output=output,
        target=target[1],
        resource=target[0],
        data=flags["data"],
        val_data=flags["val_data"],
        rounds=flags["rounds"],
        learn=Schedule(
            epochs=flags["epochs"],
            steps=flags["steps"],
            batch_size=flags["batch_size"],
            optimizer=flags["optimizer"],
            lr=flags["lr"],
            seed=flags["seed"],
        ),
        finetune_epochs=flags["finetune_epochs"],
        round_to=flags["round_to"],
        strength=flags["strength"],
        mode=flags["mode"].replace("-", "_"),
        width_floor=WIDTH_FLOOR if flags["width_floor"] is None else flags["width_floor"],
        loss=flags["loss"],
        temperature=flags["temperature"],
        distill_weight=flags["distill_weight"],
        device=flags["device"],
        work_dir=flags["work_dir"] or default_work_dir(output),
        report=flags["report_path"],
        resume=flags["resume"],
        input_shapes=parse_input_shapes(flags["input_shapes"]),
        image_size=flags["image_size"],
        mean=flags["mean"] or (0.0,),
        std=flags["std"] or (1.0,),
        export_structure=flags["export_structure"],
        baseline=flags["baseline"],
        precision=flags["precision"],
        workers=flags["workers"],
        sync_bn=flags["sync_bn"],
        compile=flags["compile_"],
        augment=flags["augment"],
        latency=latency_setup(
            flags["provider"], flags["ort_threads"], flags["batch"], flags["latency_cache"]
        ),
    )
