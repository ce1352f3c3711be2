"""Per-channel normalisations (pass-through with per-channel parameters) and LRN (pins)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from morphcli.ops.base import OpRule, input_at


class BatchNormRule(OpRule):
    """Y = scale * (X - mean) / sqrt(var + eps) + B, every parameter of shape [C]."""

    op_types = ("BatchNormalization", "InstanceNormalization")

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if ctx.channels(x) is None:
            return
        ctx.alias(out, x)
        for index in range(1, len(node.inputs)):
            if isinstance(input_at(node, index), gs.Constant):
                ctx.follow(index, 0, out, "scale" if index == 1 else "param")


class LrnRule(OpRule):
    """Local response normalisation sums over neighbouring channels: its channels are pinned."""

    op_types = ("LRN",)

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        ctx.pin(x, "LRN normalises across neighbouring channels")
        ctx.alias(out, x)


RULES = [BatchNormRule(), LrnRule()]
