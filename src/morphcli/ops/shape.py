"""Shape computations and the ops that move whole axes.

Shape and the integer ops that compute shapes carry no channels. Squeeze, Unsqueeze,
Transpose, Expand and Tile pass channels through when the channel axis keeps its place and
size; anything that moves or splits the channel axis (a channel shuffle) pins. Reshape and
Flatten are in ``reshape``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import (
    OpRule,
    attr,
    const_ints,
    input_at,
    ints,
    normalize_axis,
    pass_channels_if_unchanged,
    tensor_ints,
)


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

    def trainable_input(self, node: gs.Node, index: int) -> bool:
        return False

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Shape and Size read the actual tensor's shape, so shape chains follow the batch."""
        import torch

        if node.op in ("Shape", "Size"):
            start, end = int(attr(node, "start", 0)), attr(node, "end")
            if node.op == "Size":
                return lambda x: (torch.tensor(x.numel(), device=x.device),)
            return lambda x: (torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device),)
        if node.op == "ConstantOfShape":
            value = attr(node, "value")
            fill = np.zeros(1, np.float32) if value is None else np.asarray(value.values)
            dtype, number = torch.from_numpy(fill).dtype, fill.reshape(-1)[0].item()
            return lambda shape: (
                torch.full(tensor_ints(shape), number, dtype=dtype, device=shape.device),
            )
        if node.op == "Range":
            return lambda start, limit, delta: (
                torch.arange(
                    start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device
                ),
            )
        if node.op == "NonZero":
            return lambda x: (torch.nonzero(x).t(),)
        fn = {
            "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
            "GreaterOrEqual": torch.ge, "Not": torch.logical_not, "And": torch.logical_and,
            "Or": torch.logical_or,
        }[node.op]  # fmt: skip
        return lambda *xs: (fn(*xs),)


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

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Axes are an attribute before opset 13, an input since; Squeeze without axes
        drops every dim of size 1; Unsqueeze axes index the output."""
        given = ints(node.attrs["axes"]) if "axes" in node.attrs else const_ints(node, 1)
        squeeze = node.op == "Squeeze"

        def reshaped(x, axes_input=None):
            axes = given if given is not None or axes_input is None else tensor_ints(axes_input)
            if squeeze:
                if axes is None:
                    return (x.squeeze(),)
                return (x.squeeze(tuple(normalize_axis(a, x.dim()) for a in axes)),)
            rank = x.dim() + len(axes)
            for axis in sorted(normalize_axis(a, rank) for a in axes):
                x = x.unsqueeze(axis)
            return (x,)

        return reshaped


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

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        perm = attr(node, "perm")
        if perm is None:
            return lambda x: (x.permute(*reversed(range(x.dim()))),)
        perm = ints(perm)
        return lambda x: (x.permute(perm),)


class BroadcastRule(OpRule):
    """Expand and Tile: pass-through when the channel dim is unchanged."""

    op_types = ("Expand", "Tile")

    def connect(self, node: gs.Node, ctx) -> None:
        pass_channels_if_unchanged(node, ctx, f"{node.op} repeats along the channel axis")

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Expand broadcasts both ways (numpy rules); Tile repeats each axis."""
        import torch

        fixed = const_ints(node, 1)
        if node.op == "Tile":
            return lambda x, repeats: (
                x.repeat(fixed if fixed is not None else tensor_ints(repeats)),
            )

        def expand(x, shape):
            target = fixed if fixed is not None else tensor_ints(shape)
            return (x.expand(torch.broadcast_shapes(x.shape, target)),)

        return expand

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
    SqueezeRule(),
    TransposeRule(),
    BroadcastRule(),
]
