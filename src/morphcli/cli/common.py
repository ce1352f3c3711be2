"""The ``morphnet`` command line: click commands and nothing else.

Exit codes: 0 ok, 1 budget not met / check failed, 2 bad input, 3 internal error.
Commands that train import torch inside their own function, so ``analyze`` starts fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from morphcli import __version__
from morphcli.errors import EXIT_BUDGET, EXIT_INTERNAL, MorphError

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MorphError into one line on stderr and its exit code; anything else is exit 3.

    Set MORPHCLI_DEBUG=1 to see the traceback of an internal error.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MorphError as error:
            stderr.print(f"[red]error:[/red] {error}", soft_wrap=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            stderr.print("[red]interrupted[/red]")
            sys.exit(130)
        except Exception as error:
            if os.environ.get("MORPHCLI_DEBUG"):
                raise
            stderr.print(
                f"[red]internal error:[/red] {type(error).__name__}: {error} "
                "(rerun with MORPHCLI_DEBUG=1 for the traceback, and please report it)",
                soft_wrap=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


def input_shapes_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="NAME=1x3x224x224",
        help="Concrete shape of an input with dynamic dims (repeatable).",
    )(command)


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    from morphcli.model import parse_input_shape

    return dict(parse_input_shape(v) for v in values)


def print_json(doc: dict[str, Any]) -> None:
    """One JSON document on stdout, nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="morphnet")
def main() -> None:
    """Slim trained ONNX networks to a FLOPs or parameter budget with MorphNet."""


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--all-ops", is_flag=True, help="List every op, not only those with a cost.")
@click.option("--max-flops", metavar="T", help="Exit 1 when FLOPs exceed T (e.g. 300M).")
@click.option("--max-params", metavar="T", help="Exit 1 when parameters exceed T (e.g. 5M).")
@handle_errors
def analyze(
    model_path: str,
    input_shapes: tuple[str, ...],
    as_json: bool,
    all_ops: bool,
    max_flops: str | None,
    max_params: str | None,
) -> None:
    """Channel groups, per-op FLOPs and parameters, and what can be removed."""
    from morphcli.channels import build_channel_graph
    from morphcli.cost import build_cost_model, parse_target
    from morphcli.model import load_model
    from morphcli.report import analysis, human, render_analysis

    model = load_model(model_path, parse_input_shapes(input_shapes))
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    doc = analysis(model, cg, cm)
    if as_json:
        print_json(doc)
    else:
        render_analysis(doc, stdout, all_ops=all_ops)
    over = []
    for flag, text, key in (
        ("--max-flops", max_flops, "flops"),
        ("--max-params", max_params, "params"),
    ):
        if text is None:
            continue
        limit = parse_target(text, doc[key], flag)
        if doc[key] > limit:
            over.append(f"{key} {human(doc[key])} > {flag} {human(limit)}")
    if over:
        stderr.print(f"[red]over budget:[/red] {'; '.join(over)} ({model_path})")
        sys.exit(EXIT_BUDGET)


def _one_target(target_flops: str | None, target_params: str | None) -> tuple[str, str] | None:
    """("flops" | "params", text) of the one resource target given, or None."""
    if target_flops is not None and target_params is not None:
        raise MorphError("give --target-flops or --target-params, not both")
    if target_flops is not None:
        return "flops", target_flops
    return None if target_params is None else ("params", target_params)


def _show_widths(doc: dict[str, Any], as_json: bool) -> None:
    from morphcli.report_widths import render_widths

    if as_json:
        print_json(doc)
    else:
        render_widths(doc, stdout)


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The ONNX file to write.")
@click.option(
    "--threshold",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(min=0),
    help="A BN scale under this (absolute) counts as zero.",
)
@click.option(
    "--allow-approximate",
    is_flag=True,
    help="Also remove constant channels whose bias fold is not exact (padded convs).",
)
@click.option("--target-flops", metavar="T", help="Remove the least important channels to T.")
@click.option("--target-params", metavar="T", help="Parameter target, written the same way.")
@click.option(
    "--ratio",
    type=click.FloatRange(min=0, max=1, min_open=True),
    help="Keep this fraction of every removable group, by importance.",
)
@click.option(
    "--round-to",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Every width a multiple of N (or its full width).",
)
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def prune(
    model_path: str,
    output: str,
    threshold: float,
    allow_approximate: bool,
    target_flops: str | None,
    target_params: str | None,
    ratio: float | None,
    round_to: int,
    input_shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Remove dead channels, or the least important ones to a target, without training."""
    from morphcli.prune import run_prune

    doc = run_prune(
        model_path,
        output,
        input_shapes=parse_input_shapes(input_shapes),
        threshold=threshold,
        allow_approximate=allow_approximate,
        target=_one_target(target_flops, target_params),
        ratio=ratio,
        round_to=round_to,
    )
    _show_widths(doc, as_json)


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The ONNX file to write.")
@click.option(
    "--multiplier",
    type=click.FloatRange(min=0, min_open=True),
    help="Width multiplier W (1.5 widens, 0.5 shrinks by importance).",
)
@click.option("--target-flops", metavar="T", help="The largest uniform width within T FLOPs.")
@click.option("--target-params", metavar="T", help="Parameter target, written the same way.")
@click.option(
    "--round-to",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Every width a multiple of N.",
)
@click.option(
    "--init",
    "init_mode",
    type=click.Choice(["preserve", "random"]),
    default="preserve",
    show_default=True,
    help="preserve: replicate channels (same function); random: fresh filters read with "
    "zero weights (same function at init).",
)
@click.option(
    "--noise",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="preserve: zero-sum noise (relative to each weight's std) that breaks replica symmetry.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of noise and init.")
@input_shapes_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def expand(
    model_path: str,
    output: str,
    multiplier: float | None,
    target_flops: str | None,
    target_params: str | None,
    round_to: int,
    init_mode: str,
    noise: float,
    seed: int,
    input_shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Change every removable width by one multiplier, function-preserving by default."""
    from morphcli.expand import run_expand
    from morphcli.surgery import Init

    doc = run_expand(
        model_path,
        output,
        input_shapes=parse_input_shapes(input_shapes),
        multiplier=multiplier,
        target=_one_target(target_flops, target_params),
        round_to=round_to,
        init=Init(init_mode, noise, seed),
    )
    _show_widths(doc, as_json)


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected numbers like 0.5 or 0.485,0.456,0.406: {text!r}", param_hint=flag
        ) from None


def _image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    from morphcli.model import parse_shape

    dims = parse_shape(text)
    if len(dims) not in (1, 2):
        raise click.BadParameter(f"expected HxW or N: {text!r}", param_hint="--image-size")
    return (dims[0], dims[-1])


def _strength(text: str) -> str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise click.BadParameter(
            f"expected auto or a positive number: {text!r}", param_hint="--lambda"
        )
    return text


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="The ONNX file to write.")
@click.option("--target-flops", metavar="T", help="FLOPs budget: 50%, 100%, 1.2G, 300M ...")
@click.option("--target-params", metavar="T", help="Parameter budget, written the same way.")
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
    type=click.IntRange(1),
    help="Make every removable width a multiple of N.",
)
@click.option(
    "--lambda",
    "strength",
    default="auto",
    show_default=True,
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
    "--loss",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "ce", "distill"]),
    help="Cross entropy on labels, or distillation from the input model.",
)
@click.option(
    "--temperature",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Distillation temperature for logits.",
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
    type=click.FloatRange(min=0, min_open=True),
    help="Learning rate (default 0.01 for SGD, 0.001 for Adam).",
)
@click.option("--image-size", metavar="HxW", help="Resize folder images (default: the input's).")
@click.option("--mean", metavar="M[,M,M]", help="Per-channel mean subtracted from images.")
@click.option("--std", metavar="S[,S,S]", help="Per-channel std dividing images.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option("--threads", type=click.IntRange(1), help="CPU threads for torch.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    help="Where checkpoints go (default: OUTPUT.work).",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --work-dir.")
@click.option(
    "--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@input_shapes_option
@handle_errors
def shrink(model_path: str, output: str, target_flops: str | None, target_params: str | None,
           data: str, val_data: str | None, rounds: int, epochs: int, steps: int | None,
           finetune_epochs: int, round_to: int, strength: str, mode: str, loss: str,
           temperature: float, batch_size: int, optimizer: str, lr: float | None,
           image_size: str | None, mean: str | None, std: str | None, seed: int, device: str,
           threads: int | None, work_dir: str | None, resume: bool, report_path: str | None,
           as_json: bool, input_shapes: tuple[str, ...]) -> None:  # fmt: skip
    """MorphNet: learn where channels matter, then fit the model to a FLOPs or params budget."""
    if (target_flops is None) == (target_params is None):
        raise MorphError("give one of --target-flops or --target-params")
    import torch

    from morphcli.model import write_atomic
    from morphcli.progress import Progress
    from morphcli.report import render_shrink
    from morphcli.shrink import ShrinkConfig, run_shrink
    from morphcli.train import Schedule

    if threads:
        torch.set_num_threads(threads)
    config = ShrinkConfig(
        model=model_path,
        output=output,
        target=target_flops or target_params,
        resource="flops" if target_flops else "params",
        data=data,
        val_data=val_data,
        rounds=rounds,
        learn=Schedule(epochs, steps, batch_size, optimizer, lr, seed),
        finetune_epochs=finetune_epochs,
        round_to=round_to,
        strength=_strength(strength),
        mode=mode.replace("-", "_"),
        loss=loss,
        temperature=temperature,
        device=device,
        work_dir=work_dir or f"{output}.work",
        resume=resume,
        input_shapes=parse_input_shapes(input_shapes),
        image_size=_image_size(image_size),
        mean=_floats(mean, "--mean") or (0.0,),
        std=_floats(std, "--std") or (1.0,),
    )
    try:
        report = run_shrink(config, Progress(stderr))
    except KeyboardInterrupt:
        stderr.print(
            f"[red]interrupted[/red]: the last checkpoint is in {config.work_dir}; "
            "continue with --resume"
        )
        sys.exit(130)
    if report_path:
        text = (json.dumps(report, indent=2) + "\n").encode()
        write_atomic(report_path, lambda stream: stream.write(text))
    if as_json:
        print_json(report)
    else:
        render_shrink(report, stdout)
