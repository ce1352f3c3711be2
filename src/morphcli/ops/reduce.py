"""Reductions: pass-through over spatial axes (SE blocks' ReduceMean), pinned over channels."""

from __future__ import annotations

from collections.abc import Callable

import onnx_graphsurgeon as gs

from morphcli.ops.base import (
    OpRule,
    attr,
    const_ints,
    input_at,
    ints,
    normalize_axis,
    tensor_ints,
)


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

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Axes are an attribute in older opsets, an input since (ReduceSum 13, the others
        18); no axes reduce everything unless noop_with_empty_axes."""
        import torch

        keep = bool(attr(node, "keepdims", 1))
        if node.op in ("ArgMax", "ArgMin"):
            return _arg_reduce(node, keep)
        reducers = {
            "ReduceMean": lambda x, dims: x.mean(dims, keepdim=keep),
            "ReduceSum": lambda x, dims: x.sum(dims, keepdim=keep),
            "ReduceMax": lambda x, dims: x.amax(dims, keepdim=keep),
            "ReduceMin": lambda x, dims: x.amin(dims, keepdim=keep),
            "ReduceL1": lambda x, dims: x.abs().sum(dims, keepdim=keep),
            "ReduceL2": lambda x, dims: (x * x).sum(dims, keepdim=keep).sqrt(),
            "ReduceSumSquare": lambda x, dims: (x * x).sum(dims, keepdim=keep),
            "ReduceLogSumExp": lambda x, dims: torch.logsumexp(x, dims, keepdim=keep),
        }

        def product(x, dims):
            for dim in sorted(dims, reverse=True):
                x = x.prod(dim, keepdim=keep)
            return x

        fn = reducers.get(node.op, product)
        given = ints(node.attrs["axes"]) if "axes" in node.attrs else const_ints(node, 1)
        noop = bool(attr(node, "noop_with_empty_axes", 0))

        def reduce(x, axes_input=None):
            axes = given if given is not None or axes_input is None else tensor_ints(axes_input)
            if not axes:
                if noop:
                    return (x,)
                axes = range(x.dim())
            return (fn(x, tuple(normalize_axis(a, x.dim()) for a in axes)),)

        return reduce


def _arg_reduce(node: gs.Node, keep: bool) -> Callable:
    """ArgMax / ArgMin: the first extreme index, or the last with select_last_index."""
    axis = int(attr(node, "axis", 0))
    last = bool(attr(node, "select_last_index", 0))
    name = "argmax" if node.op == "ArgMax" else "argmin"

    def arg(x):
        if not last:
            return (getattr(x, name)(axis, keepdim=keep),)
        flipped = getattr(x.flip(axis), name)(axis, keepdim=keep)
        return (x.shape[axis] - 1 - flipped,)

    return arg


RULES = [ReduceRule()]
