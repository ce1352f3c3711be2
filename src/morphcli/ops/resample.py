"""The torch side of Resize and Upsample (their rule is SpatialRule in ``pooling``).

Every mode is resampled one axis at a time: each output position reads its source taps
(nearest 1, linear 2, cubic 4) at the coordinates ONNX defines, computed in float32 as
onnxruntime computes them, so the module matches onnxruntime exactly in index choice.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import attr, const_ints, const_value, input_at, normalize_axis, tensor_ints


def take(x, axis: int, index: np.ndarray):
    import torch

    return x.index_select(axis, torch.as_tensor(index, device=x.device))


def _floats(node: gs.Node, index: int) -> list[float] | None:
    value = const_value(input_at(node, index))
    return None if value is None else [float(v) for v in value.reshape(-1)]


def resize_op(node: gs.Node, ctx) -> Callable:
    """Resize (opset >= 11: roi, scales, sizes inputs) and Resize-10 / Upsample (scales,
    asymmetric coordinates), resampled one axis at a time: each output position reads its
    source taps (nearest 1, linear 2, cubic 4) as ONNX and onnxruntime place them. An axis
    that keeps its size at scale 1 is left alone."""
    legacy = node.op == "Upsample" or ctx.opset < 11
    mode = attr(node, "mode", "nearest")
    method = "linear" if mode in ("bilinear", "trilinear") else mode
    if method not in ("nearest", "linear", "cubic"):
        raise NotImplementedError(f"{node.op} mode {mode!r}")
    if int(attr(node, "antialias", 0)):
        raise NotImplementedError(f"{node.op} with antialias")
    coords = "asymmetric" if legacy else attr(node, "coordinate_transformation_mode", "half_pixel")
    sampling = (
        method,
        coords,
        "legacy" if legacy else attr(node, "nearest_mode", "round_prefer_floor"),
        float(attr(node, "cubic_coeff_a", -0.75)),
        bool(attr(node, "exclude_outside", 0)),
    )
    fill = float(attr(node, "extrapolation_value", 0.0))

    def resample(x, out: list[int], factors: list[float], box: list[float] | None):
        rank = x.dim()
        for axis in range(rank):
            size = x.shape[axis]
            start, end = (box[axis], box[rank + axis]) if box else (0.0, 1.0)
            if out[axis] == size and factors[axis] == 1.0 and coords != "tf_crop_and_resize":
                continue
            taps = _taps(*sampling, size, out[axis], factors[axis], start, end)
            x = _interpolate(x, axis, *taps, fill)
        return x

    if legacy:
        scales = attr(node, "scales")
        scales = _floats(node, 1) if scales is None else [float(s) for s in scales]

        def upsample(x, scales_input=None):
            factors = scales if scales is not None else _floats_of(scales_input)
            return (resample(x, *_scaled(x.shape, range(x.dim()), factors), None),)

        return upsample
    roi, scales, sizes = _floats(node, 1), _floats(node, 2), const_ints(node, 3)
    axes = attr(node, "axes")
    policy = attr(node, "keep_aspect_ratio_policy", "stretch")
    analysed = ctx.shape(node.inputs[0].name)

    def resize(x, roi_input=None, scales_input=None, sizes_input=None):
        rank = x.dim()
        chosen = range(rank) if axes is None else [normalize_axis(a, rank) for a in axes]
        box = roi if roi is not None or roi_input is None else _floats_of(roi_input)
        factors = scales if scales is not None or scales_input is None else _floats_of(scales_input)
        if factors:
            return (resample(x, *_scaled(x.shape, chosen, factors), box),)
        wanted = sizes if sizes is not None else tensor_ints(sizes_input)
        if sizes is not None and analysed is not None and len(analysed) == rank:
            # A constant size equal to the analysed input dim (the batch) follows the input.
            wanted = [
                x.shape[a] if w == analysed[a] else w for a, w in zip(chosen, wanted, strict=True)
            ]
        return (resample(x, *_sized(x.shape, chosen, wanted, policy), box),)

    return resize


def _floats_of(tensor) -> list[float]:
    return [float(v) for v in tensor.reshape(-1).tolist()]


def _scaled(shape, axes, factors: list[float]) -> tuple[list[int], list[float]]:
    """Output sizes floor(in * scale) (in float32, as onnxruntime) and per-axis scales."""
    out, scales = list(shape), [1.0] * len(shape)
    for axis, factor in zip(axes, factors, strict=True):
        scales[axis] = factor
        out[axis] = int(np.float32(shape[axis]) * np.float32(factor))
    return out, scales


def _sized(shape, axes, sizes: list[int], policy: str) -> tuple[list[int], list[float]]:
    """Output sizes and scales out / in; the not_larger / not_smaller policies use one
    scale (min / max over the axes) and round(scale * in) sizes."""
    axes = list(axes)
    ratios = [np.float32(s) / np.float32(shape[a]) for a, s in zip(axes, sizes, strict=True)]
    if policy != "stretch":
        common = min(ratios) if policy == "not_larger" else max(ratios)
        ratios = [common] * len(axes)
        sizes = [int(np.floor(common * shape[a] + 0.5)) for a in axes]
    out, scales = list(shape), [1.0] * len(shape)
    for axis, size, ratio in zip(axes, sizes, ratios, strict=True):
        out[axis], scales[axis] = size, float(ratio)
    return out, scales


def _source_coords(
    coords: str, in_size: int, out_size: int, scale: float, start: float, end: float
) -> np.ndarray:
    """Input coordinate of each output position (ONNX coordinate_transformation_mode)."""
    x = np.arange(out_size, dtype=np.float32)
    s = np.float32(scale)
    if coords in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric"):
        if coords == "pytorch_half_pixel" and out_size <= 1:
            return np.zeros_like(x)
        offset = np.float32(0.0)
        if coords == "half_pixel_symmetric":
            adjustment = np.float32(out_size) / (s * np.float32(in_size))
            offset = np.float32(in_size / 2) * (1 - adjustment)
        return offset + (x + 0.5) / s - 0.5
    if coords == "align_corners":
        return x * np.float32(in_size - 1) / np.float32(max(out_size - 1, 1))
    if coords == "asymmetric":
        return x / s
    if coords == "tf_crop_and_resize":
        span = np.float32(in_size - 1)
        if out_size <= 1:
            return np.full_like(x, 0.5 * (start + end) * span)
        return start * span + x * (end - start) * span / np.float32(out_size - 1)
    raise NotImplementedError(f"Resize coordinate_transformation_mode {coords!r}")


@lru_cache(maxsize=256)
def _taps(
    method: str,
    coords: str,
    rounding: str,
    cubic_a: float,
    exclude_outside: bool,
    in_size: int,
    out_size: int,
    scale: float,
    start: float,
    end: float,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(source indices [taps, out], their weights or None for nearest, positions outside
    the input to fill with extrapolation_value or None)."""
    src = _source_coords(coords, in_size, out_size, scale, start, end)
    last = in_size - 1
    outside = (src < 0) | (src > last) if coords == "tf_crop_and_resize" else None
    if method == "nearest":
        rounded = {
            "round_prefer_floor": lambda v: np.ceil(v - 0.5),
            "round_prefer_ceil": lambda v: np.floor(v + 0.5),
            "floor": np.floor,
            "ceil": np.ceil,
            # Before opset 11: truncate, or ceil when downsampling (onnxruntime's rule).
            "legacy": np.ceil if scale < 1 else np.trunc,
        }[rounding](src)
        return np.clip(rounded, 0, last).astype(np.int64)[None], None, outside
    if method == "linear":
        if outside is None:
            src = np.clip(src, 0, last)
        low = np.floor(src)
        weight = (src - low).astype(np.float32)
        low = np.clip(low, 0, last).astype(np.int64)
        return np.stack([low, np.minimum(low + 1, last)]), np.stack([1 - weight, weight]), outside
    low = np.floor(src)
    t = (src - low).astype(np.float64)
    a = cubic_a
    weights = np.stack(
        [
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        ]
    )
    index = low.astype(np.int64)[None] + np.arange(-1, 3)[:, None]
    if exclude_outside:
        weights = weights * ((index >= 0) & (index <= last))
        weights = weights / weights.sum(0, keepdims=True)
    return np.clip(index, 0, last), weights.astype(np.float32), outside


def _interpolate(x, axis: int, index, weights, outside, fill: float):
    """Sum over taps of weight * x at the tap's index along ``axis``."""
    import torch

    shape = [1] * x.dim()
    shape[axis] = -1
    result = None
    for tap in range(len(index)):
        part = take(x, axis, index[tap])
        if weights is not None:
            part = part * torch.as_tensor(weights[tap], dtype=x.dtype, device=x.device).view(shape)
        result = part if result is None else result + part
    if outside is not None and outside.any():
        mask = torch.as_tensor(outside, device=x.device).view(shape)
        result = result.masked_fill(mask, fill)
    return result
