"""Channel-wise unary ops (output channel i is a function of input channel i alone) and
Softmax-like ops, which pin the channels when they normalise across them."""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import OpRule, attr, const_value, input_at, normalize_axis

# ONNX TensorProto element types -> torch dtype names (Cast's ``to``).
TORCH_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
}  # fmt: skip


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

    def trainable_input(self, node: gs.Node, index: int) -> bool:
        """Clip bounds and Dropout's ratio are settings."""
        return index == 0

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        if node.op == "Clip":
            return _clip(node, ctx)
        if node.op == "Dropout":
            return _dropout(node, ctx)
        fn = _elementwise(node)

        def unary(x, *settings):
            return (fn(x),)

        return unary


def _elementwise(node: gs.Node) -> Callable:
    """The op as a function of its one tensor input, attributes bound."""
    import torch
    import torch.nn.functional as F

    simple = {
        "Relu": F.relu, "Sigmoid": torch.sigmoid, "HardSwish": F.hardswish, "Tanh": torch.tanh,
        "Softplus": F.softplus, "Softsign": F.softsign, "Exp": torch.exp, "Log": torch.log,
        "Neg": torch.neg, "Abs": torch.abs, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal,
        "Erf": torch.erf, "Mish": F.mish, "Floor": torch.floor, "Ceil": torch.ceil,
        "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos,
        "Identity": lambda x: x,
    }  # fmt: skip
    if node.op in simple:
        return simple[node.op]
    alpha = attr(node, "alpha")
    if node.op == "LeakyRelu":
        return lambda x: F.leaky_relu(x, 0.01 if alpha is None else alpha)
    if node.op in ("Elu", "Celu"):
        fn = F.elu if node.op == "Elu" else F.celu
        return lambda x: fn(x, 1.0 if alpha is None else alpha)
    if node.op == "ThresholdedRelu":
        return lambda x: F.threshold(x, 1.0 if alpha is None else alpha, 0.0)
    if node.op == "HardSigmoid":
        slope, shift = 0.2 if alpha is None else alpha, float(attr(node, "beta", 0.5))
        return lambda x: torch.clamp(x * slope + shift, 0.0, 1.0)
    if node.op == "Selu":
        scale = float(attr(node, "gamma", 1.05070102214813232421875))
        alpha = 1.67326319217681884765625 if alpha is None else alpha
        return lambda x: scale * torch.where(x > 0, x, alpha * torch.expm1(x))
    if node.op == "Gelu":
        approximate = attr(node, "approximate", "none")
        return lambda x: F.gelu(x, approximate=approximate)
    if node.op == "Cast":
        dtype = getattr(torch, TORCH_DTYPES.get(int(attr(node, "to")), "_unsupported"), None)
        if dtype is None:
            raise NotImplementedError(f"Cast to ONNX type {attr(node, 'to')}")
        return lambda x: x.to(dtype)
    raise NotImplementedError(f"no torch implementation for {node.op}")


def _clip(node: gs.Node, ctx) -> Callable:
    """Bounds are attributes before opset 11, optional inputs since (constant ones bound)."""
    import torch

    if ctx.opset < 11:
        bounds = [attr(node, "min"), attr(node, "max")]
    else:
        bounds = [_scalar(input_at(node, i)) for i in (1, 2)]

    def clip(x, low=None, high=None):
        low = bounds[0] if low is None or bounds[0] is not None else low
        high = bounds[1] if high is None or bounds[1] is not None else high
        return (torch.clamp(x, low, high),)

    return clip


def _dropout(node: gs.Node, ctx) -> Callable:
    """Drops with probability ``ratio`` while training (or with the op's training_mode),
    scaling kept values by 1 / (1 - ratio); the optional mask output marks kept values."""
    import torch
    import torch.nn.functional as F

    if ctx.opset < 12:
        ratio, always = float(attr(node, "ratio", 0.5)), False
    else:
        given = _scalar(input_at(node, 1))
        ratio = 0.5 if input_at(node, 1) is None else given
        mode = input_at(node, 2)
        if mode is not None and const_value(mode) is None:
            raise NotImplementedError("Dropout with a computed training_mode")
        always = bool(_scalar(mode))
    with_mask = len(node.outputs) > 1 and bool(node.outputs[1].name)

    def dropout(x, ratio_input=None, training_mode=None):
        p = float(ratio_input) if ratio is None else ratio
        training = always or ctx.training
        if not with_mask:
            return (F.dropout(x, p, training),)
        if not training or p == 0.0:
            return (x, torch.ones_like(x, dtype=torch.bool))
        mask = torch.rand_like(x) >= p
        return (x * mask / (1.0 - p), mask)

    return dropout


def _scalar(tensor: gs.Tensor | None) -> float | int | None:
    """A constant scalar input as a Python number (int for integer tensors), else None."""
    value = const_value(tensor)
    return None if value is None else np.asarray(value).reshape(-1)[0].item()


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

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        import torch.nn.functional as F

        def hardmax(x, dim):
            return x.new_zeros(x.shape).scatter_(dim, x.argmax(dim, keepdim=True), 1.0)

        fn = {"Softmax": F.softmax, "LogSoftmax": F.log_softmax, "Hardmax": hardmax}[node.op]
        legacy = ctx.opset < 13
        axis = int(attr(node, "axis", 1 if legacy else -1))
        if not legacy:

            def along_axis(x):
                return (fn(x, axis),)

            return along_axis

        def flattened(x):
            start = normalize_axis(axis, x.dim())
            return (fn(x.reshape(prod(x.shape[:start]), -1), 1).reshape(x.shape),)

        return flattened


RULES = [UnaryRule(), SoftmaxRule()]
