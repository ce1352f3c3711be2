"""Gemm and MatMul: fully connected producers over the last axis of a [*, K] input."""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import FlopTerm, OpRule, Shape, attr, he_normal, input_at


def _follow_bias(node: gs.Node, ctx, index: int, out: gs.Tensor, out_channels: int) -> None:
    """A bias broadcast along the output features follows them; a scalar bias stays."""
    bias = input_at(node, index)
    if isinstance(bias, gs.Constant) and bias.shape and int(bias.shape[-1]) == out_channels > 1:
        ctx.follow(index, len(bias.shape) - 1, out, "param")


def _features_last(ctx, x: gs.Tensor) -> bool:
    """The input's channel slots run along its last axis (true for any [N, K] tensor)."""
    return ctx.channels(x) is not None and ctx.axis(x.name) == len(ctx.shape(x.name)) - 1


class GemmRule(OpRule):
    op_types = ("Gemm",)

    def connect(self, node: gs.Node, ctx) -> None:
        a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
        trans_a, trans_b = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
        if not isinstance(b, gs.Constant) or trans_a or not _features_last(ctx, a):
            ctx.pin(a, "Gemm with a computed or transposed operand")
            ctx.pin(out, "Gemm with a computed or transposed operand")
            return
        out_channels = int(b.shape[0] if trans_b else b.shape[1])
        ctx.produce(out, out_channels)
        ctx.follow(1, 1 if trans_b else 0, a, "in")
        ctx.follow(1, 0 if trans_b else 1, out, "filter")
        _follow_bias(node, ctx, 2, out, out_channels)

    def fresh_input(self, node: gs.Node, index: int, values: np.ndarray, rng) -> np.ndarray | None:
        """B: He normal over its K inputs (axis 1 with transB, else 0); C: 0."""
        if index == 1 and values.ndim == 2:
            return he_normal(values, values.shape[1 if attr(node, "transB", 0) else 0], rng)
        return np.zeros_like(values) if index == 2 else None

    def flops(self, node: gs.Node, shape: Callable[[str], Shape]) -> list[FlopTerm]:
        a, out = node.inputs[0].name, node.outputs[0].name
        rows = shape(out)[0]
        return [FlopTerm(2.0 * rows, ((a, 1), (out, 1)))]

    def constant_input_effect(self, node: gs.Node, values: np.ndarray):
        """delta = alpha * values @ B (B transposed when transB): exact."""
        b = node.inputs[1]
        if not isinstance(b, gs.Constant) or int(attr(node, "transA", 0)):
            return None
        weight = np.asarray(b.values, dtype=np.float64)
        if int(attr(node, "transB", 0)):
            weight = weight.T
        return float(attr(node, "alpha", 1.0)) * (values @ weight), True

    def add_to_output(self, node: gs.Node, delta: np.ndarray, ctx) -> None:
        """Y = alpha * A B + beta * C: C += delta / beta (C = delta and beta = 1 when beta is 0
        or C is absent)."""
        dtype = np.asarray(node.inputs[1].values).dtype
        beta = float(attr(node, "beta", 1.0))
        bias = input_at(node, 2)
        if bias is None or beta == 0.0:
            node.attrs["beta"] = 1.0
            ctx.set_input(node, 2, delta.astype(dtype))
            return
        base = np.asarray(bias.values, dtype=np.float64)
        ctx.set_input(node, 2, (base + delta / beta).astype(dtype))

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Y = alpha * A' B' + beta * C; with alpha = beta = 1 and a 1-D C, ``F.linear``
        (a transB weight is already torch's [out, in] layout)."""
        import torch.nn.functional as F

        trans_a, trans_b = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
        alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
        c = input_at(node, 2)
        c_rank = 0 if c is None else len(ctx.shape(c.name) or (0, 0))
        if alpha == 1.0 and beta == 1.0 and c_rank <= 1:

            def linear(a, b, c=None):
                return (F.linear(a.t() if trans_a else a, b if trans_b else b.t(), c),)

            return linear

        def general(a, b, c=None):
            y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
            if alpha != 1.0:
                y = y * alpha
            if c is not None:
                y = y + (c * beta if beta != 1.0 else c)
            return (y,)

        return general


class MatMulRule(OpRule):
    op_types = ("MatMul",)

    def connect(self, node: gs.Node, ctx) -> None:
        a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
        b_shape = ctx.shape(b.name)
        if not isinstance(b, gs.Constant) or len(b_shape) != 2 or not _features_last(ctx, a):
            ctx.pin(a, "MatMul with a computed operand or channels off the last axis")
            ctx.pin(out, "MatMul with a computed operand or channels off the last axis")
            return
        ctx.produce(out, int(b_shape[1]), axis=len(ctx.shape(out.name)) - 1)
        ctx.follow(1, 0, a, "in")
        ctx.follow(1, 1, out, "filter")

    def fresh_input(self, node: gs.Node, index: int, values: np.ndarray, rng) -> np.ndarray | None:
        """A constant B [..., K, N]: He normal over its K inputs."""
        if index != 1 or values.ndim < 2:
            return None
        return he_normal(values, values.shape[-2], rng)

    def flops(self, node: gs.Node, shape: Callable[[str], Shape]) -> list[FlopTerm]:
        a, b, out = node.inputs[0].name, node.inputs[1].name, node.outputs[0].name
        a_shape, b_shape = shape(a), shape(b)
        if len(b_shape) == 2:
            last = len(a_shape) - 1
            return [FlopTerm(2.0 * prod(a_shape[:-1]), ((a, last), (out, last)))]
        return [FlopTerm(2.0 * prod(shape(out)) * a_shape[-1])]

    def constant_input_effect(self, node: gs.Node, values: np.ndarray):
        """delta = values @ B for a constant 2-D B: exact."""
        b = node.inputs[1]
        if not isinstance(b, gs.Constant) or len(b.shape) != 2:
            return None
        return values @ np.asarray(b.values, dtype=np.float64), True

    def add_to_output(self, node: gs.Node, delta: np.ndarray, ctx) -> None:
        """MatMul has no bias: an Add of ``delta`` follows it, writing the original output."""
        out = node.outputs[0]
        product = gs.Variable(ctx.fresh_name(f"{out.name}_matmul"), dtype=out.dtype)
        node.outputs[0] = product
        bias = gs.Constant(
            ctx.fresh_name(f"{node.name}_bias"),
            delta.astype(np.asarray(node.inputs[1].values).dtype),
        )
        ctx.graph.nodes.append(
            gs.Node(
                "Add",
                ctx.fresh_name(f"{node.name}_bias_add"),
                inputs=[product, bias],
                outputs=[out],
            )
        )

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        import torch

        def matmul(a, b):
            return (torch.matmul(a, b),)

        return matmul


RULES = [GemmRule(), MatMulRule()]
