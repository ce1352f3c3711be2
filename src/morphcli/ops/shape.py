"""Reshape-like ops and shape computations.

Shape and the integer ops that compute shapes carry no channels. Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Expand and Tile pass channels through when the channel axis keeps its
place and size; a Flatten (or Reshape) of [N, C, H, W] into [N, C*H*W] turns each channel
into H*W consecutive features; anything that moves or splits the channel axis (a channel
shuffle) pins.
"""

from __future__ import annotations

from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import OpRule, attr, input_at, ints, normalize_axis


class ShapeOnlyRule(OpRule):
    """Ops that read only shapes or compute integers: they leave channels alone."""

    op_types = (
        "Shape", "Size", "ConstantOfShape", "Range", "NonZero", "Equal", "Less", "Greater",
        "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or",
    )  # fmt: skip

    def connect(self, node: gs.Node, ctx) -> None:
        if node.op in ("Shape", "Size"):
            return
        for tensor in node.inputs:
            ctx.pin(tensor, f"{node.op} reads channel values")


def reshape_channels(ctx, node: gs.Node, x: gs.Tensor, out: gs.Tensor) -> None:
    """Shared by Reshape and Flatten: pass-through, features, or pin."""
    slots = ctx.channels(x)
    if slots is None:
        return
    in_shape, out_shape = ctx.shape(x.name), ctx.shape(out.name)
    axis = ctx.axis(x.name)
    if out_shape is None:
        ctx.pin(x, f"{node.op} to an unknown shape")
        return
    if tuple(out_shape[: axis + 1]) == tuple(in_shape[: axis + 1]):
        ctx.alias(out, x)
        return
    inner = prod(in_shape[axis + 1 :])
    if (
        len(out_shape) == axis + 1
        and tuple(out_shape[:axis]) == tuple(in_shape[:axis])
        and out_shape[axis] == in_shape[axis] * inner
    ):
        ctx.define(out, np.repeat(slots, inner), axis=axis)
        return
    ctx.pin(x, f"{node.op} moves or splits the channel axis")


class ReshapeRule(OpRule):
    op_types = ("Reshape",)

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        reshape_channels(ctx, node, x, out)
        computed = "shape" not in node.attrs and ctx.const(input_at(node, 1)) is None
        if computed and ctx.has_channels(out.name):
            rank = len(ctx.shape(out.name))
            if int(attr(node, "allowzero", 0)) or rank > ctx.axis(out.name) + 2:
                ctx.pin(x, "Reshape to a computed shape that surgery could not rewrite")

    def rewrite(self, node: gs.Node, ctx) -> None:
        """A constant target that spells out the output's channel (or feature) count gets the
        new count; 0 and -1 entries stay (they copy or infer it). A computed target (a shape
        chain that may hold today's count as a constant) becomes [0, ..., 0, -1]: every
        leading dim copied from the input, the last inferred, nothing frozen."""
        out = node.outputs[0].name
        if not ctx.changed(out):
            return
        axis = ctx.axis(out)
        if "shape" not in node.attrs and ctx.const(input_at(node, 1)) is None:
            rank = len(ctx.shape(out))
            ctx.set_input(node, 1, np.array([0] * (rank - 1) + [-1], dtype=np.int64))
            return
        if "shape" in node.attrs:
            target = ints(node.attrs["shape"])
            if target[axis] == ctx.old_count(out):
                target[axis] = ctx.new_count(out)
                node.attrs["shape"] = target
            return
        target = ctx.const(input_at(node, 1))
        if target is not None and int(target[axis]) == ctx.old_count(out):
            target = target.copy()
            target[axis] = ctx.new_count(out)
            ctx.set_input(node, 1, target)


class FlattenRule(OpRule):
    op_types = ("Flatten",)

    def connect(self, node: gs.Node, ctx) -> None:
        x = node.inputs[0]
        if ctx.channels(x) is None:
            return
        axis = normalize_axis(int(attr(node, "axis", 1)), len(ctx.shape(x.name)))
        if axis != ctx.axis(x.name):
            ctx.pin(x, f"Flatten at axis {axis} merges the channel axis with others")
            return
        reshape_channels(ctx, node, x, node.outputs[0])


def _axes(node: gs.Node, ctx) -> list[int] | None:
    """Squeeze/Unsqueeze axes: an attribute before opset 13, an input since."""
    if "axes" in node.attrs:
        return ints(node.attrs["axes"])
    tensor = input_at(node, 1)
    if tensor is None:
        return []
    value = ctx.const(tensor)
    return None if value is None else ints(value)


class SqueezeRule(OpRule):
    """Pass-through when the channel axis keeps its index ([N,C,1,1] <-> [N,C])."""

    op_types = ("Squeeze", "Unsqueeze")

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if ctx.channels(x) is None:
            return
        axis = ctx.axis(x.name)
        axes = _axes(node, ctx)
        rank_out = len(ctx.shape(out.name))
        rank_in = len(ctx.shape(x.name))
        if axes is None:
            ctx.pin(x, f"{node.op} with computed axes")
            return
        rank = rank_in if node.op == "Squeeze" else rank_out
        axes = [normalize_axis(a, rank) for a in axes]
        if not axes and node.op == "Squeeze":
            axes = [i for i, d in enumerate(ctx.shape(x.name)) if d == 1]
        if all(a > axis for a in axes):
            ctx.alias(out, x)
        else:
            ctx.pin(x, f"{node.op} moves the channel axis")


class TransposeRule(OpRule):
    op_types = ("Transpose",)

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if ctx.channels(x) is None:
            return
        rank = len(ctx.shape(x.name))
        perm = ints(attr(node, "perm", list(reversed(range(rank)))))
        axis = ctx.axis(x.name)
        if perm[axis] == axis:
            ctx.alias(out, x)
        else:
            ctx.pin(x, "Transpose moves the channel axis")


class BroadcastRule(OpRule):
    """Expand and Tile: pass-through when the channel dim is unchanged."""

    op_types = ("Expand", "Tile")

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if ctx.channels(x) is None:
            return
        axis = ctx.axis(x.name)
        in_shape, out_shape = ctx.shape(x.name), ctx.shape(out.name)
        if len(in_shape) == len(out_shape) and in_shape[axis] == out_shape[axis]:
            ctx.alias(out, x)
        else:
            ctx.pin(x, f"{node.op} repeats along the channel axis")

    def rewrite(self, node: gs.Node, ctx) -> None:
        """An Expand shape that spells out the channel count gets the new count."""
        out = node.outputs[0].name
        shape = ctx.const(input_at(node, 1)) if node.op == "Expand" else None
        if shape is None or not ctx.changed(out):
            return
        index = ctx.axis(out) - (len(ctx.shape(out)) - len(shape))
        if index >= 0 and int(shape[index]) == ctx.old_count(out):
            shape = shape.copy()
            shape[index] = ctx.new_count(out)
            ctx.set_input(node, 1, shape)


RULES = [
    ShapeOnlyRule(),
    ReshapeRule(),
    FlattenRule(),
    SqueezeRule(),
    TransposeRule(),
    BroadcastRule(),
]
