"""What a width configuration takes in memory, checked before a wider model is built.

``footprint`` is the model at batch 1 with ``widths`` channels per group: 4 bytes per
parameter (the cost model's count) plus every activation tensor, whose channel axis scales
with its groups' widths (``sum(counts * widths[groups]) / channels`` times its size).
Building, checking and running a model takes a few times that, so the bound is met early.
"""

from __future__ import annotations

from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.errors import MorphError
from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model
from morphcli.limits import PROTOBUF_LIMIT, check_memory, format_bytes
from morphcli.resources.cost import CostModel

WEIGHT_BYTES = 4


def footprint(model: Model, cg: ChannelGraph, cm: CostModel, widths: np.ndarray) -> float:
    """Bytes of the model at batch 1 with ``widths`` (weights and activations)."""
    widths = np.asarray(widths, dtype=np.float64)
    total = WEIGHT_BYTES * cm.params(widths)
    tensors = model.graph.tensors()
    for name, shape in model.shapes.items():
        if isinstance(tensors.get(name), gs.Constant):
            continue
        size = float(prod(shape)) * np.dtype(model.dtypes.get(name, np.float32)).itemsize
        channels = cg.tensors.get(name)
        if channels is not None and shape[channels.axis]:
            size *= float(np.dot(channels.counts, widths[channels.groups])) / shape[channels.axis]
        total += size
    return total


def check_widths_fit(
    model: Model, cg: ChannelGraph, cm: CostModel, widths: np.ndarray, what: str
) -> None:
    """Refuse (exit 2) widths whose model would be over the memory limit, or whose weights
    would not fit in one ONNX file; ``what`` names the cause ("--multiplier 200")."""
    weights = WEIGHT_BYTES * cm.params(np.asarray(widths, dtype=np.float64))
    if weights > PROTOBUF_LIMIT:
        raise MorphError(
            f"{what} would make {format_bytes(weights)} of weights, more than the 2 GiB one "
            "ONNX file holds",
            file=model.path,
        )
    check_memory(footprint(model, cg, cm, widths), f"{what} makes a model that", file=model.path)
