"""Reshape-like ops and shape computations.

Shape and the integer ops that compute shapes carry no channels. Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Expand and Tile pass channels through when the channel axis keeps its
place and size; a Flatten (or Reshape) of [N, C, H, W] into [N, C*H*W] turns each channel
into H*W consecutive features; anything that moves or splits the channel axis (a channel
shuffle) pins.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import (
    OpRule,
    Shape,
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

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """A computed target is used as given (0 copies the input dim unless allowzero). A
        constant one spells out the shapes of the analysis, batch included: at the analysed
        input shape the output is the analysed one; at another batch, see ``batch_scaled``."""
        x, out = node.inputs[0], node.outputs[0]
        allow_zero = bool(attr(node, "allowzero", 0))
        target = ints(node.attrs["shape"]) if "shape" in node.attrs else const_ints(node, 1)
        analysed_in, analysed_out = ctx.shape(x.name), ctx.shape(out.name)

        def resolved(x, dims: list[int]) -> list[int]:
            if allow_zero or 0 not in dims:
                return dims
            return [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]

        if target is None or analysed_in is None or analysed_out is None:

            def computed(x, shape=None):
                dims = target if target is not None else tensor_ints(shape)
                return (x.reshape(resolved(x, dims)),)

            return computed

        def constant(x, shape=None):
            if x.shape == analysed_in:
                return (x.reshape(analysed_out),)
            dims = batch_scaled(x.shape, analysed_in, analysed_out)
            return (x.reshape(dims if dims is not None else resolved(x, target)),)

        return constant

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

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        axis = int(attr(node, "axis", 1))

        def flatten(x):
            start = normalize_axis(axis, x.dim())
            return (x.reshape(prod(x.shape[:start]), prod(x.shape[start:])),)

        return flatten


def batch_scaled(shape: Shape, analysed_in: Shape, analysed_out: Shape) -> list[int] | None:
    """The output shape of a constant-target Reshape at an input shape other than the
    analysed one, or None to use the target as written.

    Exported files spell the export batch into constant targets ([1, -1, 10], or [24, 2,
    1936] for a channel shuffle that merges the batch). When the input differs from the
    analysed shape in one axis ``a`` by an integer factor r (a batch of r stacked along it),
    the output axis that starts at the same flat offset prod(in[:a]) grows by r.
    """
    if len(shape) != len(analysed_in):
        return None
    differ = [a for a, (s, t) in enumerate(zip(shape, analysed_in, strict=True)) if s != t]
    if len(differ) != 1:
        return None
    axis = differ[0]
    if analysed_in[axis] == 0 or shape[axis] % analysed_in[axis]:
        return None
    offset = prod(analysed_in[:axis])
    for j in range(len(analysed_out)):
        if prod(analysed_out[:j]) == offset:
            out = list(analysed_out)
            out[j] *= shape[axis] // analysed_in[axis]
            return out
    return None


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
    ReshapeRule(),
    FlattenRule(),
    SqueezeRule(),
    TransposeRule(),
    BroadcastRule(),
]
