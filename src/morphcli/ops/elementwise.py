"""Joins: elementwise ops over several inputs with broadcasting (Add, Mul, Sum, PRelu...).

Every full-width input shares its channels with the output (a residual Add, an SE gate
Mul); inputs of size 1 on the channel axis broadcast and are skipped; a constant operand as
wide as the channels is a per-channel parameter that follows them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

import onnx_graphsurgeon as gs

from morphcli.ops.base import OpRule, aligned_axis


class JoinRule(OpRule):
    op_types = (
        "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow", "PRelu", "Where",
    )  # fmt: skip

    def connect(self, node: gs.Node, ctx) -> None:
        out = node.outputs[0]
        out_shape = ctx.shape(out.name)
        if out_shape is None or len(out_shape) < 2 or not ctx.model.is_float(out.name):
            return
        mapped = [t for t in node.inputs if ctx.channels(t) is not None]
        if not mapped:
            return
        rank = len(out_shape)
        reference = next((t for t in mapped if len(ctx.shape(t.name)) == rank), mapped[0])
        axis = ctx.axis(reference.name) + rank - len(ctx.shape(reference.name))
        width = out_shape[axis]
        joined, mismatched, broadcast = [], [], []
        for tensor in mapped:
            shape = ctx.shape(tensor.name)
            own_axis = aligned_axis(rank, len(shape), axis)
            # Size 1 under a wider output broadcasts; under a width-1 output (a residual
            # stage pruned to one channel) it is that channel and must stay joined.
            if own_axis is not None and shape[own_axis] == 1 < width:
                broadcast.append(tensor)
                continue
            if own_axis == ctx.axis(tensor.name) and len(ctx.channels(tensor)) == width:
                joined.append(tensor)
            else:
                mismatched.append(tensor)
        if mismatched or not joined:
            for tensor in mapped:
                ctx.pin(tensor, f"{node.op} broadcasts channels along different axes")
            ctx.pin(out, f"{node.op} broadcasts channels along different axes")
            return
        ctx.join(joined)
        ctx.alias(out, joined[0], axis=axis)
        for tensor in broadcast:
            # One channel read by all of the output's: it can be neither removed nor widened.
            ctx.pin(tensor, f"{node.op} broadcasts this single channel across {width}")
        for index, tensor in enumerate(node.inputs):
            value = ctx.const(tensor)
            if value is None or width == 1:
                continue
            own_axis = aligned_axis(rank, value.ndim, axis)
            if own_axis is not None and value.shape[own_axis] == width:
                ctx.follow(index, own_axis, out, "param")

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Numpy broadcasting; integer Div truncates; Pow keeps the base's type."""
        import torch

        def div(a, b):
            return a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")

        def power(a, b):
            y = torch.pow(a, b)
            return y if y.dtype == a.dtype else y.to(a.dtype)

        binary = {
            "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": div, "Pow": power,
            "PRelu": lambda x, slope: torch.where(x < 0, x * slope, x),
        }  # fmt: skip
        variadic = {"Sum": torch.add, "Max": torch.maximum, "Min": torch.minimum, "Mean": torch.add}
        if node.op == "Where":
            return lambda condition, a, b: (torch.where(condition, a, b),)
        if node.op in variadic:
            fn, count = variadic[node.op], len(node.inputs)
            mean = node.op == "Mean"

            def fold(*xs):
                y = reduce(fn, xs)
                return (y / count if mean else y,)

            return fold
        fn = binary[node.op]
        return lambda a, b: (fn(a, b),)


RULES = [JoinRule()]
