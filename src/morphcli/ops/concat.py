"""Concat, Split, Slice and Gather: channel segments.

On the channel axis, a Concat's output slots are its inputs' slots in order, and a Split
output or a Slice is a segment of its input's slots. On any other axis they pass channels
through (a Concat's inputs then share their channels).
"""

from __future__ import annotations

from collections.abc import Callable

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
    tensor_ints,
)


class ConcatRule(OpRule):
    op_types = ("Concat",)

    def connect(self, node: gs.Node, ctx) -> None:
        out = node.outputs[0]
        mapped = [t for t in node.inputs if ctx.channels(t) is not None]
        if not mapped or not ctx.model.is_float(out.name):
            return
        rank = len(ctx.shape(out.name))
        axis = normalize_axis(int(attr(node, "axis")), rank)
        channel_axis = ctx.axis(mapped[0].name)
        if any(ctx.axis(t.name) != channel_axis for t in mapped):
            for tensor in mapped:
                ctx.pin(tensor, "Concat of tensors with channels on different axes")
            return
        if axis != channel_axis:
            ctx.join(mapped)
            ctx.alias(out, mapped[0])
            return
        segments = []
        for tensor in node.inputs:
            slots = ctx.channels(tensor)
            if slots is None:
                slots = ctx.pinned_slots(ctx.shape(tensor.name)[axis], "Concat of a constant")
            segments.append(slots)
        ctx.define(out, np.concatenate(segments), axis=axis)

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        import torch

        axis = int(attr(node, "axis"))
        return lambda *xs: (torch.cat(xs, axis),)


class SplitRule(OpRule):
    op_types = ("Split",)

    def connect(self, node: gs.Node, ctx) -> None:
        x = node.inputs[0]
        slots = ctx.channels(x)
        if slots is None:
            return
        axis = normalize_axis(int(attr(node, "axis", 0)), len(ctx.shape(x.name)))
        if axis != ctx.axis(x.name):
            for out in node.outputs:
                ctx.alias(out, x)
            return
        start = 0
        for out in node.outputs:
            size = ctx.shape(out.name)[axis]
            ctx.define(out, slots[start : start + size], axis=axis)
            start += size

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Sizes from ``split`` (attribute before opset 13, input since), else equal parts
        of ceil(dim / outputs), the last one smaller (opset 18 ``num_outputs``)."""
        import torch

        axis, count = int(attr(node, "axis", 0)), len(node.outputs)
        split = attr(node, "split")
        sizes = ints(split) if split is not None else const_ints(node, 1)

        def split_op(x, split_input=None):
            parts = sizes or (tensor_ints(split_input) if split_input is not None else None)
            if not parts:
                dim = x.shape[axis]
                chunk = -(-dim // count)
                parts = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
            return torch.split(x, parts, axis)

        return split_op

    def rewrite(self, node: gs.Node, ctx) -> None:
        """Split sizes become the outputs' new channel counts: the ``split`` attribute before
        opset 13, the input since (an equal split or ``num_outputs`` becomes explicit)."""
        x = node.inputs[0].name
        if not ctx.changed(x):
            return
        axis = normalize_axis(int(attr(node, "axis", 0)), len(ctx.shape(x)))
        if axis != ctx.axis(x):
            return
        sizes, start = [], 0
        for out in node.outputs:
            begin, end = ctx.segment(x, out.name, start)
            sizes.append(end - begin)
            start += ctx.old_count(out.name)
        if ctx.opset < 13:
            node.attrs["split"] = sizes
        else:
            node.attrs.pop("num_outputs", None)
            ctx.set_input(node, 1, np.array(sizes, dtype=np.int64))


class SliceRule(OpRule):
    """Opset >= 10 takes starts/ends/axes/steps as inputs, older opsets as attributes."""

    op_types = ("Slice",)

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        slots = ctx.channels(x)
        if slots is None:
            return
        rank = len(ctx.shape(x.name))
        params = slice_params(node, ctx.const)
        if params is None:
            if ctx.shape(out.name)[ctx.axis(x.name)] == len(slots):
                ctx.alias(out, x)
            else:
                ctx.pin(x, "Slice with computed bounds on the channel axis")
            return
        starts, ends, axes, steps = params
        axes = [normalize_axis(a, rank) for a in axes]
        channel_axis = ctx.axis(x.name)
        if channel_axis not in axes:
            ctx.alias(out, x)
            return
        i = axes.index(channel_axis)
        if steps[i] != 1:
            # A strided channel slice keeps every k-th channel: removing one shifts the rest.
            ctx.pin(x, f"Slice with step {steps[i]} on the channel axis")
        ctx.define(out, slots[slice(starts[i], ends[i], steps[i])], axis=channel_axis)

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Bounds clamp as ONNX says (Python's slice rules are the same); a negative step
        slices forwards and flips, since torch slicing takes positive steps only."""
        if "starts" in node.attrs:
            fixed = [ints(node.attrs["starts"]), ints(node.attrs["ends"])]
            fixed += [ints(node.attrs["axes"]) if "axes" in node.attrs else None, None]
        else:
            fixed = [const_ints(node, index) for index in (1, 2, 3, 4)]

        def slice_op(x, *inputs):
            given = [*inputs, None, None, None, None][:4]
            starts, ends, axes, steps = [
                tensor_ints(tensor) if value is None and tensor is not None else value
                for value, tensor in zip(fixed, given, strict=True)
            ]
            rank = x.dim()
            axes = range(len(starts)) if axes is None else axes
            index, flips = [slice(None)] * rank, []
            for i, axis in enumerate(axes):
                axis = normalize_axis(axis, rank)
                step = 1 if steps is None else steps[i]
                kept = range(x.shape[axis])[starts[i] : ends[i] : step]
                if step > 0 or not kept:
                    index[axis] = slice(kept.start, kept.stop, step) if kept else slice(0, 0)
                else:
                    index[axis] = slice(kept[-1], kept[0] + 1, -step)
                    flips.append(axis)
            y = x[tuple(index)]
            return (y.flip(flips) if flips else y,)

        return slice_op

    def rewrite(self, node: gs.Node, ctx) -> None:
        """A channel-axis slice's bounds become its block of the new input channels."""
        x, out = node.inputs[0].name, node.outputs[0].name
        params = slice_params(node, ctx.const)
        if not ctx.changed(x) or params is None:
            return
        starts, ends, axes, steps = params
        rank = len(ctx.shape(x))
        axes = [normalize_axis(a, rank) for a in axes]
        if ctx.axis(x) not in axes:
            return
        i = axes.index(ctx.axis(x))
        kept = range(ctx.old_count(x))[slice(starts[i], ends[i], steps[i])]
        starts[i], ends[i] = ctx.segment(x, out, kept.start if len(kept) else 0)
        if "starts" in node.attrs:
            node.attrs["starts"], node.attrs["ends"] = starts, ends
            return
        dtype = ctx.const(node.inputs[1]).dtype
        ctx.set_input(node, 1, np.array(starts, dtype=dtype))
        ctx.set_input(node, 2, np.array(ends, dtype=dtype))


def slice_params(node: gs.Node, const) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(starts, ends, axes, steps) of a Slice, or None when any of them is computed."""
    if "starts" in node.attrs:
        starts, ends = ints(node.attrs["starts"]), ints(node.attrs["ends"])
        axes = ints(node.attrs.get("axes", range(len(starts))))
        return starts, ends, axes, [1] * len(starts)
    values = []
    for index in (1, 2, 3, 4):
        tensor = input_at(node, index)
        value = None if tensor is None else const(tensor)
        if tensor is not None and value is None:
            return None
        values.append(value)
    starts, ends = ints(values[0]), ints(values[1])
    axes = ints(values[2]) if values[2] is not None else list(range(len(starts)))
    steps = ints(values[3]) if values[3] is not None else [1] * len(starts)
    return starts, ends, axes, steps


class GatherRule(OpRule):
    """Gather of constant 1-D indices on the channel axis picks slots; on a later axis it
    passes channels through; anything else pins."""

    op_types = ("Gather",)

    def connect(self, node: gs.Node, ctx) -> None:
        x, indices, out = node.inputs[0], node.inputs[1], node.outputs[0]
        slots = ctx.channels(x)
        if slots is None:
            return
        rank = len(ctx.shape(x.name))
        axis = normalize_axis(int(attr(node, "axis", 0)), rank)
        channel_axis = ctx.axis(x.name)
        picked = ctx.const(indices)
        if axis > channel_axis:
            ctx.alias(out, x)
        elif axis == channel_axis and picked is not None and picked.ndim == 1:
            ctx.define(out, slots[picked.astype(np.int64)], axis=channel_axis)
        else:
            ctx.pin(x, "Gather across the channel axis")

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """np.take(data, indices, axis): negative indices count from the end; a constant
        scalar index is a ``select``."""
        import torch

        axis = int(attr(node, "axis", 0))
        picked = const_value(node.inputs[1])
        if picked is not None and picked.ndim == 0:
            position = int(picked)
            return lambda x, indices: (x.select(axis, position),)

        def gather(x, indices):
            dim = normalize_axis(axis, x.dim())
            flat = indices.reshape(-1)
            flat = torch.where(flat < 0, flat + x.shape[dim], flat)
            y = x.index_select(dim, flat)
            return (y.reshape(*x.shape[:dim], *indices.shape, *x.shape[dim + 1 :]),)

        return gather

    def rewrite(self, node: gs.Node, ctx) -> None:
        """Channel indices point at the new input channels: copy r of old channel i."""
        x, out = node.inputs[0].name, node.outputs[0].name
        picked = ctx.const(node.inputs[1])
        target = ctx.index_map(out)
        if not ctx.changed(x) or target is None or picked is None or picked.ndim != 1:
            return
        if normalize_axis(int(attr(node, "axis", 0)), len(ctx.shape(x))) != ctx.axis(x):
            return
        old = np.where(picked < 0, picked + ctx.old_count(x), picked)
        new = [
            ctx.new_position(x, int(old[o]), int(r))
            for o, r in zip(target.old_index, target.replica, strict=True)
        ]
        ctx.set_input(node, 1, np.array(new, dtype=picked.dtype))


RULES = [ConcatRule(), SplitRule(), SliceRule(), GatherRule()]
