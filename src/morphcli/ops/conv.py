"""Conv and ConvTranspose: the producers of convolutional channels.

Conv weight [Cout, Cin/group, k...]; ConvTranspose weight [Cin, Cout/group, k...].
A plain conv makes fresh output channels and consumes its input's; a depthwise conv
(group == Cin, Cout = k * Cin) ties output channel j to input channel j // k; any other
grouped conv pins both sides, since its groups would have to shrink in step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.errors import MorphError
from morphcli.ops.base import FlopTerm, OpRule, Shape, attr, he_normal, input_at, ints


def _kernel_size(node: gs.Node) -> int:
    return prod(int(d) for d in node.inputs[1].shape[2:])


def is_depthwise(node: gs.Node, in_channels: int, out_channels: int) -> bool:
    """group == in channels, and each input channel makes k >= 1 outputs."""
    group = int(attr(node, "group", 1))
    return group > 1 and group == in_channels and out_channels % in_channels == 0


def conv_geometry(node: gs.Node, ctx) -> tuple[list[int], list[int], list[int]]:
    """(kernel, strides, dilations) of a Conv, ConvTranspose or pooling node."""
    kernel = attr(node, "kernel_shape")
    if kernel is None:
        kernel = ctx.shape(node.inputs[1].name)[2:]
    n = len(kernel)
    strides = ints(attr(node, "strides", [1] * n))
    return ints(kernel), strides, ints(attr(node, "dilations", [1] * n))


def same_pads(
    mode: str, sizes: Sequence[int], kernel: list[int], strides: list[int], dilations: list[int]
) -> tuple[list[int], list[int]]:
    """``auto_pad`` SAME_UPPER / SAME_LOWER: total = (ceil(in / s) - 1) * s + (k - 1) * d + 1
    - in, so that out = ceil(in / s); SAME_UPPER puts the odd pixel at the end."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        begin = total // 2 if mode == "SAME_UPPER" else total - total // 2
        begins.append(begin)
        ends.append(total - begin)
    return begins, ends


def explicit_pads(node: gs.Node, n: int) -> tuple[list[int], list[int]] | None:
    """(begins, ends) from ``pads`` (or zeros for VALID); None for a SAME ``auto_pad``."""
    mode = attr(node, "auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return None
    pads = [0] * 2 * n if mode == "VALID" else ints(attr(node, "pads", [0] * 2 * n))
    return pads[:n], pads[n:]


def torch_pads(begins: Sequence[int], ends: Sequence[int]) -> tuple[int, ...]:
    """ONNX (begins, ends) per spatial axis as ``F.pad`` pairs, last axis first."""
    return tuple(p for b, e in zip(reversed(begins), reversed(ends), strict=True) for p in (b, e))


def _pointwise(kernel: Sequence[int], node: gs.Node) -> bool:
    """A 1x1 kernel without explicit padding: every output reads exactly one input pixel.

    (A SAME ``auto_pad`` pads nothing for a 1x1 kernel: (ceil(in / s) - 1) * s + 1 <= in.)
    """
    return all(int(k) == 1 for k in kernel) and not any(ints(attr(node, "pads", [])))


def check_weight_fits(node: gs.Node, in_channels: int, transposed: bool = False) -> None:
    """Refuse a conv whose weight and ``group`` do not fit its input channels (onnx's checker
    and shape inference let these through; onnxruntime fails only when it runs them):
    Conv needs Cin = W[1] * group and group | W[0]; ConvTranspose Cin = W[0], group | Cin."""
    shape = [int(d) for d in node.inputs[1].shape]
    group = int(attr(node, "group", 1))
    if transposed:
        fits = group >= 1 and in_channels == shape[0] and shape[0] % group == 0
    else:
        fits = group >= 1 and in_channels == shape[1] * group and shape[0] % group == 0
    if not fits:
        raise MorphError(
            f"weight {'x'.join(map(str, shape))} with group {group} does not fit "
            f"{in_channels} input channels",
            node=node.name,
            op=node.op,
        )


def _add_bias(node: gs.Node, delta: np.ndarray, ctx) -> None:
    """bias += delta, creating the bias input when the conv has none."""
    weight = node.inputs[1]
    bias = input_at(node, 2)
    base = np.zeros(len(delta)) if bias is None else np.asarray(bias.values, dtype=np.float64)
    ctx.set_input(node, 2, (base + delta).astype(np.asarray(weight.values).dtype))


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
        check_weight_fits(node, in_channels)
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

    def fresh_input(self, node: gs.Node, index: int, values: np.ndarray, rng) -> np.ndarray | None:
        """Weight [O, I/group, k...]: He normal over its I/group * k inputs; bias: 0."""
        if index == 1:
            return he_normal(values, int(np.prod(values.shape[1:])), rng)
        return np.zeros_like(values) if index == 2 else None

    def rewrite(self, node: gs.Node, ctx) -> None:
        """A depthwise conv's ``group`` is its new input channel count."""
        x, out = node.inputs[0].name, node.outputs[0].name
        if ctx.changed(x) and is_depthwise(node, ctx.old_count(x), ctx.old_count(out)):
            node.attrs["group"] = ctx.new_count(x)

    def constant_input_effect(self, node: gs.Node, values: np.ndarray):
        """delta[o] = sum_i values[i] * sum_k W[o, i, k]; exact for a 1x1 kernel without pads."""
        weight = node.inputs[1]
        if int(attr(node, "group", 1)) != 1 or not isinstance(weight, gs.Constant):
            return None
        w = np.asarray(weight.values, dtype=np.float64)
        delta = np.einsum("oik,i->o", w.reshape(*w.shape[:2], -1), values)
        return delta, _pointwise(w.shape[2:], node)

    def add_to_output(self, node: gs.Node, delta: np.ndarray, ctx) -> None:
        _add_bias(node, delta, ctx)

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        import torch.nn.functional as F

        kernel, strides, dilations = conv_geometry(node, ctx)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
        group = int(attr(node, "group", 1))
        pads = explicit_pads(node, len(kernel))
        if pads is None:
            mode = attr(node, "auto_pad")

            def same(x, w, b=None):
                pads = same_pads(mode, x.shape[2:], kernel, strides, dilations)
                return (conv(F.pad(x, torch_pads(*pads)), w, b, strides, 0, dilations, group),)

            return same
        begins, ends = pads
        if begins == ends:

            def symmetric(x, w, b=None):
                return (conv(x, w, b, strides, begins, dilations, group),)

            return symmetric
        pre = torch_pads(begins, ends)

        def asymmetric(x, w, b=None):
            return (conv(F.pad(x, pre), w, b, strides, 0, dilations, group),)

        return asymmetric


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
        check_weight_fits(node, len(ctx.channels(x)), transposed=True)
        ctx.produce(out, int(weight.shape[1]) * group)
        if group == 1:
            ctx.follow(1, 0, x, "in")
            ctx.follow(1, 1, out, "filter")
        else:
            ctx.pin(x, f"grouped transposed conv (group={group})")
            ctx.pin(out, f"grouped transposed conv (group={group})")
        if bias is not None:
            ctx.follow(2, 0, out, "param")

    def fresh_input(self, node: gs.Node, index: int, values: np.ndarray, rng) -> np.ndarray | None:
        """Weight [I, O/group, k...]: He normal over its I * k inputs; bias: 0."""
        if index == 1:
            return he_normal(values, int(values.shape[0] * np.prod(values.shape[2:])), rng)
        return np.zeros_like(values) if index == 2 else None

    def flops(self, node: gs.Node, shape: Callable[[str], Shape]) -> list[FlopTerm]:
        x, out = node.inputs[0].name, node.outputs[0].name
        coef = 2.0 * prod(shape(x)[2:]) * _kernel_size(node)
        group = int(attr(node, "group", 1))
        return [FlopTerm(coef / group, ((x, 1), (out, 1)))]

    def constant_input_effect(self, node: gs.Node, values: np.ndarray):
        """delta[o] = sum_i values[i] * sum_k W[i, o, k]; exact for a 1x1 kernel with stride 1
        and no pads (every output pixel then gets exactly one tap)."""
        weight = node.inputs[1]
        if int(attr(node, "group", 1)) != 1 or not isinstance(weight, gs.Constant):
            return None
        w = np.asarray(weight.values, dtype=np.float64)
        delta = np.einsum("iok,i->o", w.reshape(*w.shape[:2], -1), values)
        unit_strides = all(s == 1 for s in ints(attr(node, "strides", [])))
        no_extra = not any(ints(attr(node, "output_padding", [])))
        exact = _pointwise(w.shape[2:], node) and unit_strides and no_extra
        return delta, exact and attr(node, "output_shape") is None

    def add_to_output(self, node: gs.Node, delta: np.ndarray, ctx) -> None:
        _add_bias(node, delta, ctx)

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Symmetric ``pads`` run as torch's padding; ``output_shape``, SAME and asymmetric
        pads run the full transposed conv and crop: total = full + output_padding - out,
        SAME_UPPER (and explicit pads) putting ``begin`` pixels at the start."""
        import torch.nn.functional as F

        kernel, strides, dilations = conv_geometry(node, ctx)
        n = len(kernel)
        conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
        group = int(attr(node, "group", 1))
        extra = ints(attr(node, "output_padding", [0] * n))
        output_shape = attr(node, "output_shape")
        pads = explicit_pads(node, n)
        fits = all(e < max(s, d) for e, s, d in zip(extra, strides, dilations, strict=True))
        if output_shape is None and pads is not None and pads[0] == pads[1] and fits:
            begins = pads[0]

            def direct(x, w, b=None):
                return (conv(x, w, b, strides, begins, extra, group, dilations),)

            return direct
        mode = attr(node, "auto_pad", "NOTSET")
        wanted = None if output_shape is None else ints(output_shape)[-n:]

        def crops(x, full) -> tuple[list[int], list[int]]:
            """Pixels to cut from the start and end of ``full`` + output_padding zeros."""
            if wanted is None and pads is not None:
                return pads
            begins, ends = [], []
            for i, size in enumerate(full.shape[2:]):
                want = wanted[i] if wanted else x.shape[2 + i] * strides[i]
                total = max(size + extra[i] - want, 0)
                begins.append(total // 2 if mode == "SAME_UPPER" else total - total // 2)
                ends.append(total - begins[-1])
            return begins, ends

        def cropped(x, w, b=None):
            full = conv(x, w, None, strides, 0, 0, group, dilations)
            begins, ends = crops(x, full)
            keep = [e - end for e, end in zip(extra, ends, strict=True)]
            y = F.pad(full, torch_pads([-p for p in begins], keep))
            if b is not None:
                y = y + b.reshape(1, -1, *[1] * n)
            return (y,)

        return cropped


RULES = [ConvRule(), ConvTransposeRule()]
