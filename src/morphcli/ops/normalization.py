"""Per-channel normalisations (pass-through with per-channel parameters) and LRN (pins)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from morphcli.ops.base import OpRule, attr, input_at


class BatchNormRule(OpRule):
    """Y = scale * (X - mean) / sqrt(var + eps) + B, every parameter of shape [C]."""

    op_types = ("BatchNormalization", "InstanceNormalization")

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        if ctx.channels(x) is None:
            return
        ctx.alias(out, x)
        for index in range(1, len(node.inputs)):
            if isinstance(input_at(node, index), gs.Constant):
                ctx.follow(index, 0, out, "scale" if index == 1 else "param")

    def state_inputs(self, node: gs.Node) -> tuple[int, ...]:
        """BatchNormalization's running mean and variance."""
        return (3, 4) if node.op == "BatchNormalization" else ()

    def fresh_input(self, node: gs.Node, index: int, values: np.ndarray, rng) -> np.ndarray | None:
        """Scale and running variance 1, shift and running mean 0."""
        if index == 0:
            return None
        return (np.ones_like if index in (1, 4) else np.zeros_like)(values)

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """Training (``ctx.training`` or the op's ``training_mode``) normalises with batch
        statistics and updates the running ones in place: running = momentum * running +
        (1 - momentum) * batch (torch's momentum is ONNX's 1 - momentum)."""
        import torch.nn.functional as F

        eps = float(attr(node, "epsilon", 1e-5))
        if node.op == "InstanceNormalization":

            def instance_norm(x, scale, bias):
                return (F.instance_norm(x, weight=scale, bias=bias, eps=eps),)

            return instance_norm
        if not int(attr(node, "spatial", 1)):
            raise NotImplementedError("BatchNormalization with spatial=0")
        if sum(1 for t in node.outputs if t.name) > 1:
            raise NotImplementedError("BatchNormalization with running-statistics outputs")
        momentum = 1.0 - float(attr(node, "momentum", 0.9))
        always = bool(attr(node, "training_mode", 0))

        def batch_norm(x, scale, bias, mean, var):
            training = always or ctx.training
            if training and ctx.sum_over_ranks is not None:
                return (_synced_batch_norm(x, scale, bias, mean, var, momentum, eps, ctx),)
            return (F.batch_norm(x, mean, var, scale, bias, training, momentum, eps),)

        return batch_norm


def _synced_batch_norm(x, scale, bias, running_mean, running_var, momentum, eps, ctx):
    """Training batch norm over the global batch of a data-parallel run, statistics in fp32.

    Each process reduces its batch per channel to the count n_r, n_r * mean_r and
    M2_r + n_r * mean_r^2 (M2_r: squared deviations from its own mean, well conditioned);
    ``ctx.sum_over_ranks`` adds those up in float64, with gradients, giving the global
    mean = S1 / n and var = S2 / n - mean^2, so forward and backward see one batch. The
    running statistics take the unbiased variance, as torch's batch norm does.
    """
    import torch

    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    full = x.float()
    count = x.numel() / channels
    local_mean = full.mean(dims)
    deviation = full - local_mean.reshape(shape)
    m2 = (deviation * deviation).sum(dims).double()
    mean64 = local_mean.double()
    local = torch.cat([count * mean64, m2 + count * mean64 * mean64, mean64.new_tensor([count])])
    total = ctx.sum_over_ranks(local)
    n = total[-1]
    mean = total[:channels] / n
    var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)
    with torch.no_grad():
        unbiased = var * n / (n - 1.0).clamp_min(1.0)
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    inverse = torch.rsqrt(var.float() + eps) * scale.float()
    y = (full - mean.float().reshape(shape)) * inverse.reshape(shape)
    return (y + bias.float().reshape(shape)).to(x.dtype)


class LrnRule(OpRule):
    """Local response normalisation sums over neighbouring channels: its channels are pinned."""

    op_types = ("LRN",)

    def connect(self, node: gs.Node, ctx) -> None:
        x, out = node.inputs[0], node.outputs[0]
        ctx.pin(x, "LRN normalises across neighbouring channels")
        ctx.alias(out, x)

    def torch_op(self, node: gs.Node, ctx) -> Callable:
        """y = x / (bias + alpha / size * sum of x^2 over channels [c - floor((size - 1) / 2),
        c + ceil((size - 1) / 2)])^beta (torch's own LRN centres even windows the other way)."""
        import torch.nn.functional as F

        size = int(attr(node, "size"))
        alpha, beta = float(attr(node, "alpha", 1e-4)), float(attr(node, "beta", 0.75))
        bias = float(attr(node, "bias", 1.0))
        front = (size - 1) // 2

        def lrn(x):
            squares = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
            padded = F.pad(squares, (0, 0, front, size - 1 - front))
            mean = F.avg_pool2d(padded, (size, 1), stride=1).reshape(x.shape)
            return (x / (mean * alpha + bias) ** beta,)

        return lrn


RULES = [BatchNormRule(), LrnRule()]
