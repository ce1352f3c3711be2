"""Reshape and Flatten: channels pass through when the channel axis keeps its place and
size; a Flatten (or Reshape) of [N, C, H, W] into [N, C*H*W] turns each channel into H*W
consecutive features; a Reshape that moves or splits the channel axis (a channel shuffle)
pins. Constant targets that spell out a channel count are rewritten with the new width.
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
    tensor_ints,
)


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


RULES = [ReshapeRule(), FlattenRule()]
