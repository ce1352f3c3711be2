"""What ``shrink`` checks up front besides what every command does (``prepare`` calls these
before any data is read or any step trained): its outputs, a trainable float32 model, a
target whose grown model fits the memory limit, image sizes and labels that fit the model."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from morphcli.errors import MorphError
from morphcli.graph.model import Model
from morphcli.learn.checkpoint import CHECKPOINT_NAME
from morphcli.learn.data import DataSplit
from morphcli.learn.datacheck import check_labels
from morphcli.outputs import FOLDER, OutputPlan
from morphcli.resources.memory import check_widths_fit
from morphcli.shrink.config import ShrinkConfig
from morphcli.surgery.widths import multiplier_widths, target_multiplier

if TYPE_CHECKING:
    from morphcli.resources.resource import Resource
    from morphcli.shrink.run import Analysed


def check_outputs(config: ShrinkConfig, model: Model) -> OutputPlan:
    """``-o``, ``--report``, ``--export-structure``, ``--work-dir`` and its checkpoint,
    checked together."""
    inputs = model.input_files()
    for flag, spec in (("--data", config.data), ("--val-data", config.val_data)):
        if spec and os.path.isfile(spec):
            inputs[spec] = flag
    plan = OutputPlan(inputs)
    plan.add("-o", config.output)
    if config.report:
        plan.add("--report", config.report)
    if config.export_structure:
        plan.add("--export-structure", config.export_structure)
    plan.add("--work-dir", config.work_dir, FOLDER, temporary=True)
    checkpoint = os.path.join(config.work_dir, CHECKPOINT_NAME)
    plan.add("the checkpoint in --work-dir", checkpoint, temporary=True)
    plan.check()
    return plan


def check_trainable(model: Model) -> None:
    """shrink trains in float32: float16 (and any other float) models are refused."""
    for name, dtype in model.dtypes.items():
        if np.issubdtype(dtype, np.floating) and np.dtype(dtype) != np.float32:
            raise MorphError(
                f"tensor {name!r} is {np.dtype(dtype)}: shrink trains float32 models "
                "(convert it to float32 first)",
                file=model.path,
            )


def check_growth(
    analysed: Analysed, resource: Resource, config: ShrinkConfig, target: float, flag: str
) -> None:
    """A target above the model's cost grows it: the grown model must fit the memory limit."""
    cm, cg = analysed.cm, analysed.cg
    if target <= resource.value(cg.widths()):
        return
    multiplier = target_multiplier(resource, cg, target, config.round_to)
    widths = multiplier_widths(cg, multiplier, config.round_to)
    check_widths_fit(analysed.model, cg, cm, widths, f"{flag} {config.target}")


def check_image_size(config: ShrinkConfig, shape: tuple[int, ...]) -> None:
    """Images are resized to the model input's size: another ``--image-size`` cannot fit."""
    if config.image_size and tuple(config.image_size) != tuple(shape[2:4]):
        size = "x".join(str(d) for d in config.image_size)
        raise MorphError(
            f"--image-size {size} differs from the model input's "
            f"{'x'.join(str(d) for d in shape[2:4])}"
        )


def check_data_labels(config: ShrinkConfig, model: Model, data: DataSplit) -> None:
    """With cross entropy, labels must be class indices of the model's one output."""
    if not data.labelled or config.loss == "distill":
        return
    outputs = model.graph.outputs
    if len(outputs) != 1:
        raise MorphError(
            f"labels need a model with one output, it has {len(outputs)} (use --loss distill)",
            file=model.path,
        )
    shape = model.shapes.get(outputs[0].name, ())
    classes = int(shape[1]) if len(shape) > 1 else 1
    check_labels({"--data": data.train, "validation data": data.val}, classes)
