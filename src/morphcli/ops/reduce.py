"""Reductions: pass-through over spatial axes (SE blocks' ReduceMean), pinned over channels."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from morphcli.ops.base import OpRule, attr, input_at, ints, normalize_axis


class ReduceRule(OpRule):
    op_types = (
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
        "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin",
    )  # fmt: skip

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if ctx.channels(x) is None:
            return
        rank = len(ctx.shape(x.name))
        axis = ctx.axis(x.name)
        if node.op in ("ArgMax", "ArgMin"):
            axes = [int(attr(node, "axis", 0))]
        elif "axes" in node.attrs:
            axes = ints(node.attrs["axes"])
        elif input_at(node, 1) is not None:
            value = ctx.const(node.inputs[1])
            if value is None:
                ctx.pin(x, f"{node.op} over computed axes")
                return
            axes = ints(value)
        else:
            axes = [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        axes = [normalize_axis(a, rank) for a in axes]
        keep = int(attr(node, "keepdims", 1))
        if axis in axes:
            ctx.pin(x, f"{node.op} reduces over the channel axis")
        elif keep or all(a > axis for a in axes):
            ctx.alias(out, x)
        else:
            ctx.pin(x, f"{node.op} drops an axis before the channel axis")


RULES = [ReduceRule()]
