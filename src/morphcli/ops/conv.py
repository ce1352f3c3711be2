"""Conv and ConvTranspose: the producers of convolutional channels.

Conv weight [Cout, Cin/group, k...]; ConvTranspose weight [Cin, Cout/group, k...].
A plain conv makes fresh output channels and consumes its input's; a depthwise conv
(group == Cin, Cout = k * Cin) ties output channel j to input channel j // k; any other
grouped conv pins both sides, since its groups would have to shrink in step.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import FlopTerm, OpRule, Shape, attr, input_at


def _kernel_size(node: gs.Node) -> int:
    return prod(int(d) for d in node.inputs[1].shape[2:])


def is_depthwise(node: gs.Node, in_channels: int, out_channels: int) -> bool:
    """group == in channels, and each input channel makes k >= 1 outputs."""
    group = int(attr(node, "group", 1))
    return group > 1 and group == in_channels and out_channels % in_channels == 0


class ConvRule(OpRule):
    op_types = ("Conv",)

    def connect(self, node: gs.Node, ctx) -> None:
        x, weight, out = node.inputs[0], node.inputs[1], node.outputs[0]
        bias = input_at(node, 2)
        in_slots = ctx.channels(x)
        if not isinstance(weight, gs.Constant) or in_slots is None:
            ctx.pin(x, "weights are computed, not constant")
            ctx.pin(out, "weights are computed, not constant")
            return
        out_channels, in_channels = int(weight.shape[0]), len(in_slots)
        group = int(attr(node, "group", 1))
        if group == 1:
            ctx.produce(out, out_channels)
            ctx.follow(1, 1, x, "in")
        elif is_depthwise(node, in_channels, out_channels):
            ctx.define(out, np.repeat(in_slots, out_channels // in_channels))
        else:
            ctx.produce(out, out_channels)
            ctx.pin(x, f"grouped conv (group={group}) mixes channels within groups")
            ctx.pin(out, f"grouped conv (group={group}) mixes channels within groups")
        ctx.follow(1, 0, out, "filter")
        if bias is not None:
            ctx.follow(2, 0, out, "param")

    def flops(self, node: gs.Node, shape: Callable[[str], Shape]) -> list[FlopTerm]:
        x, out = node.inputs[0].name, node.outputs[0].name
        out_shape = shape(out)
        coef = 2.0 * prod(out_shape[2:]) * _kernel_size(node)
        in_channels, out_channels = shape(x)[1], out_shape[1]
        group = int(attr(node, "group", 1))
        if is_depthwise(node, in_channels, out_channels):
            return [FlopTerm(coef, ((out, 1),), tied_input=(x, 1))]
        return [FlopTerm(coef / group, ((x, 1), (out, 1)))]


class ConvTransposeRule(OpRule):
    op_types = ("ConvTranspose",)

    def connect(self, node: gs.Node, ctx) -> None:
        x, weight, out = node.inputs[0], node.inputs[1], node.outputs[0]
        bias = input_at(node, 2)
        group = int(attr(node, "group", 1))
        if not isinstance(weight, gs.Constant) or ctx.channels(x) is None:
            ctx.pin(x, "weights are computed, not constant")
            ctx.pin(out, "weights are computed, not constant")
            return
        ctx.produce(out, int(weight.shape[1]) * group)
        if group == 1:
            ctx.follow(1, 0, x, "in")
            ctx.follow(1, 1, out, "filter")
        else:
            ctx.pin(x, f"grouped transposed conv (group={group})")
            ctx.pin(out, f"grouped transposed conv (group={group})")
        if bias is not None:
            ctx.follow(2, 0, out, "param")

    def flops(self, node: gs.Node, shape: Callable[[str], Shape]) -> list[FlopTerm]:
        x, out = node.inputs[0].name, node.outputs[0].name
        coef = 2.0 * prod(shape(x)[2:]) * _kernel_size(node)
        group = int(attr(node, "group", 1))
        return [FlopTerm(coef / group, ((x, 1), (out, 1)))]


RULES = [ConvRule(), ConvTransposeRule()]
