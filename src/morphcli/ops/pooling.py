"""Ops that touch only spatial axes: pooling, Resize/Upsample and Pad. Channel i in gives
channel i out; a Resize or Pad that changes the channel count pins."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import (
    OpRule,
    attr,
    const_ints,
    const_value,
    input_at,
    ints,
    normalize_axis,
    pass_channels_if_unchanged,
    tensor_ints,
)
from morphcli.ops.conv import conv_geometry, explicit_pads, same_pads, torch_pads
from morphcli.ops.resample import resize_op, take


class PoolRule(OpRule):
    op_types = (
        "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
        "GlobalLpPool",
    )  # fmt: skip

    def connect(self, node: gs.Node, ctx) -> None:
        if ctx.channels(node.inputs[0]) is not None:
            ctx.alias(node.outputs[0], node.inputs[0])

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Global pools reduce every axis after the channels; windowed pools pad like Conv
        (with torch's own padding where it is symmetric and at most half the kernel)."""
        if sum(1 for t in node.outputs if t.name) > 1:
            raise NotImplementedError(f"{node.op} with an Indices output")
        if node.op.startswith("Global"):
            p = float(attr(node, "p", 2))
            reduce = {
                "GlobalAveragePool": lambda x, dims: x.mean(dims, keepdim=True),
                "GlobalMaxPool": lambda x, dims: x.amax(dims, keepdim=True),
                "GlobalLpPool": lambda x, dims: x.abs().pow(p).sum(dims, keepdim=True).pow(1 / p),
            }[node.op]

            def global_pool(x):
                return (reduce(x, tuple(range(2, x.dim()))),)

            return global_pool
        kernel, strides, dilations = conv_geometry(node, ctx)
        window = _window_pool(node, kernel, strides, dilations)
        pads = explicit_pads(node, len(kernel))
        mode = attr(node, "auto_pad")

        def pool(x):
            begins, ends = pads or same_pads(mode, x.shape[2:], kernel, strides, dilations)
            return (window(x, begins, ends),)

        return pool


class SpatialRule(OpRule):
    """Resize, Upsample, Pad: pass-through when the channel dim is unchanged."""

    op_types = ("Resize", "Upsample", "Pad")

    def connect(self, node: gs.Node, ctx) -> None:
        pass_channels_if_unchanged(node, ctx, f"{node.op} changes the channel dim")

    def trainable_input(self, node: gs.Node, index: int) -> bool:
        """Scales, sizes, pads and the pad value are settings."""
        return index == 0

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        return _pad(node, ctx) if node.op == "Pad" else resize_op(node, ctx)

    def rewrite(self, node: gs.Node, ctx) -> None:
        """A Resize ``sizes`` input spells out the channel count: it gets the new one."""
        out = node.outputs[0].name
        sizes = ctx.const(input_at(node, 3)) if node.op == "Resize" else None
        if sizes is None or not ctx.changed(out):
            return
        sizes = sizes.copy()
        sizes[ctx.axis(out)] = ctx.new_count(out)
        ctx.set_input(node, 3, sizes)


def _window_pool(
    node: gs.Node, kernel: list[int], strides: list[int], dilations: list[int]
) -> Callable:
    """``fn(x, begins, ends)`` for MaxPool, AveragePool or LpPool with those pads."""
    import torch
    import torch.nn.functional as F

    n = len(kernel)
    ceil = bool(attr(node, "ceil_mode", 0))

    def native(begins: list[int], ends: list[int]) -> bool:
        return begins == ends and all(2 * b <= k for b, k in zip(begins, kernel, strict=True))

    if node.op == "MaxPool":
        max_pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]

        def max_window(x, begins, ends):
            if native(begins, ends):
                return max_pool(x, kernel, strides, begins, dilations, ceil)
            x = F.pad(x, torch_pads(begins, ends), value=-torch.inf)
            return max_pool(x, kernel, strides, 0, dilations, ceil)

        return max_window
    if any(d != 1 for d in dilations):
        raise NotImplementedError(f"{node.op} with dilations")
    avg_pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    if node.op == "LpPool":
        p = float(attr(node, "p", 2))

        def lp_window(x, begins, ends):
            powers = F.pad(x.abs().pow(p), torch_pads(begins, ends))
            return (avg_pool(powers, kernel, strides, 0, ceil) * prod(kernel)).pow(1 / p)

        return lp_window
    include_pad = bool(attr(node, "count_include_pad", 0))

    def avg_window(x, begins, ends):
        if native(begins, ends):
            return avg_pool(x, kernel, strides, begins, ceil, include_pad)
        pads = torch_pads(begins, ends)
        mean = avg_pool(F.pad(x, pads), kernel, strides, 0, ceil)
        if include_pad:
            return mean
        # The mean over the window's real pixels: sum / count, both taken as window means.
        ones = x.new_ones((1, 1, *x.shape[2:]))
        return mean / avg_pool(F.pad(ones, pads), kernel, strides, 0, ceil)

    return avg_window


def _pad(node: gs.Node, ctx) -> Callable:
    """Pads are attributes before opset 11, inputs since (with ``axes`` since 18); modes
    constant, edge, reflect and wrap; negative pads crop."""
    import torch.nn.functional as F

    mode = attr(node, "mode", "constant")
    if ctx.opset < 11:
        pads, axes = ints(attr(node, "pads", attr(node, "paddings"))), None
        value = float(attr(node, "value", 0.0))
    else:
        pads, axes = const_ints(node, 1), const_ints(node, 3)
        value = 0 if input_at(node, 2) is None else _number(const_value(input_at(node, 2)))

    def pad(x, pads_input=None, value_input=None, axes_input=None):
        given = pads if pads is not None else tensor_ints(pads_input)
        rank = x.dim()
        chosen = axes if axes is not None or axes_input is None else tensor_ints(axes_input)
        chosen = range(rank) if chosen is None else [normalize_axis(a, rank) for a in chosen]
        begins, ends = [0] * rank, [0] * rank
        for i, axis in enumerate(chosen):
            begins[axis], ends[axis] = given[i], given[len(chosen) + i]
        if mode == "constant":
            fill = value if value is not None else value_input.item()
            return (F.pad(x, torch_pads(begins, ends), value=fill),)
        for axis, (begin, end) in enumerate(zip(begins, ends, strict=True)):
            if begin or end:
                x = take(x, axis, _pad_index(mode, x.shape[axis], begin, end))
        return (x,)

    return pad


@lru_cache(maxsize=256)
def _pad_index(mode: str, size: int, begin: int, end: int) -> np.ndarray:
    """The source index of each padded position along one axis (edge, reflect or wrap)."""
    index = np.arange(-begin, size + end)
    if mode == "edge":
        return np.clip(index, 0, size - 1)
    if mode == "wrap":
        return index % size
    if mode == "reflect":
        period = max(2 * size - 2, 1)
        index = index % period
        return np.where(index >= size, period - index, index)
    raise NotImplementedError(f"Pad mode {mode!r}")


def _number(value: np.ndarray | None) -> float | int | None:
    return None if value is None else np.asarray(value).reshape(-1)[0].item()


RULES = [PoolRule(), SpatialRule()]
