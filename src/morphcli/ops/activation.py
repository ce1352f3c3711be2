"""Channel-wise unary ops (output channel i is a function of input channel i alone) and
Softmax-like ops, which pin the channels when they normalise across them."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from morphcli.ops.base import OpRule, attr, normalize_axis


class UnaryRule(OpRule):
    op_types = (
        "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu",
        "Selu", "Celu", "Softplus", "Softsign", "Exp", "Log", "Neg", "Abs", "Sqrt",
        "Reciprocal", "Erf", "Gelu", "Mish", "Identity", "Dropout", "Cast", "Floor", "Ceil",
        "Round", "Sign", "ThresholdedRelu", "Sin", "Cos",
    )  # fmt: skip

    def connect(self, node: gs.Node, ctx) -> None:
        x = node.inputs[0]
        if ctx.channels(x) is not None and ctx.model.is_float(node.outputs[0].name):
            ctx.alias(node.outputs[0], x)


class SoftmaxRule(OpRule):
    """Before opset 13 the op flattens every axis from ``axis`` on (default 1); since 13 it
    normalises the one axis (default -1). Pinned where that covers the channel axis."""

    op_types = ("Softmax", "LogSoftmax", "Hardmax")

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if ctx.channels(x) is None:
            return
        rank = len(ctx.shape(x.name))
        channel_axis = ctx.axis(x.name)
        legacy = ctx.model.graph.opset < 13
        axis = normalize_axis(int(attr(node, "axis", 1 if legacy else -1)), rank)
        mixes = axis <= channel_axis if legacy else axis == channel_axis
        if mixes:
            ctx.pin(x, f"{node.op} normalises across the channel axis")
        ctx.alias(out, x)


RULES = [UnaryRule(), SoftmaxRule()]
