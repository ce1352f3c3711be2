"""Ops that touch only spatial axes: pooling, Resize/Upsample and Pad. Channel i in gives
channel i out; a Resize or Pad that changes the channel count pins."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from morphcli.ops.base import OpRule, input_at


class PoolRule(OpRule):
    op_types = (
        "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
        "GlobalLpPool",
    )  # fmt: skip

    def connect(self, node: gs.Node, ctx) -> None:
        if ctx.channels(node.inputs[0]) is not None:
            ctx.alias(node.outputs[0], node.inputs[0])


class SpatialRule(OpRule):
    """Resize, Upsample, Pad: pass-through when the channel dim is unchanged."""

    op_types = ("Resize", "Upsample", "Pad")

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if ctx.channels(x) is None:
            return
        axis = ctx.axis(x.name)
        in_shape, out_shape = ctx.shape(x.name), ctx.shape(out.name)
        if out_shape is not None and out_shape[axis] == in_shape[axis]:
            ctx.alias(out, x)
        else:
            ctx.pin(x, f"{node.op} changes the channel dim")

    def rewrite(self, node: gs.Node, ctx) -> None:
        """A Resize ``sizes`` input spells out the channel count: it gets the new one."""
        out = node.outputs[0].name
        sizes = ctx.const(input_at(node, 3)) if node.op == "Resize" else None
        if sizes is None or not ctx.changed(out):
            return
        sizes = sizes.copy()
        sizes[ctx.axis(out)] = ctx.new_count(out)
        ctx.set_input(node, 3, sizes)


RULES = [PoolRule(), SpatialRule()]
