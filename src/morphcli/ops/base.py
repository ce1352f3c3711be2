"""The fixed interface every op rule implements, and the data it hands the engines.

An op rule is the one place that knows an op type: how it treats channels (``connect``),
what it costs (``flops``), how it runs in torch (``torch_op``) and how surgery rewrites its
attributes (``rewrite``). The engines in ``channels``, ``cost``, ``surgery`` and ``wrapper``
only call these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from morphcli.graph.builder import ChannelBuilder
    from morphcli.learn.wrapper import TorchContext
    from morphcli.surgery.apply import RewriteContext

Shape = tuple[int, ...]


@dataclass(frozen=True)
class FlopTerm:
    """``coef * size(t1, axis1) * size(t2, axis2) ...`` FLOPs over tensor axes.

    Where an axis is a tensor's channel axis, the size varies with the alive channels of its
    groups; elsewhere it is the fixed dim. With no dims the term is a fixed count.
    """

    coef: float
    dims: tuple[tuple[str, int], ...] = ()
    # A depthwise conv's input axis, tied to its output channels: it costs nothing extra,
    # but the MorphNet penalty counts both sides (C * (sum p_in + sum p_out)).
    tied_input: tuple[str, int] | None = None

    def __str__(self) -> str:
        return " * ".join([f"{self.coef:g}", *(f"{t}[{a}]" for t, a in self.dims)])


class OpRule:
    """Behaviour of one family of op types. Subclasses set ``op_types`` and override methods.

    ``connect`` is required; the others default to "costs nothing", "no torch
    implementation" and "no attribute to rewrite".
    """

    op_types: ClassVar[tuple[str, ...]] = ()

    def connect(self, node: gs.Node, ctx: ChannelBuilder) -> None:
        """Declare how the node's outputs' channels relate to its inputs' (see ChannelBuilder)."""
        raise NotImplementedError

    def flops(self, node: gs.Node, shape: Callable[[str], Shape]) -> list[FlopTerm]:
        """FLOPs (2 * multiply-accumulates, batch 1) as terms over channel counts."""
        return []

    def torch_op(self, node: gs.Node, ctx: TorchContext) -> Callable[..., Any]:
        """A callable running the node in torch: ``fn(*inputs) -> tuple of outputs``.

        Called once when the module is built: attributes and constant shape-like inputs are
        parsed here, so the callable does only tensor work. It takes the node's inputs in
        order (None for an absent optional input) and may read ``ctx.training`` when called.
        Raises NotImplementedError (with the reason) for an op or attribute it cannot run.
        """
        raise NotImplementedError(f"no torch implementation for {node.op}")

    def state_inputs(self, node: gs.Node) -> tuple[int, ...]:
        """Inputs holding running state the op updates in place while training (BN statistics)."""
        return ()

    def trainable_input(self, node: gs.Node, index: int) -> bool:
        """Whether a float constant at input ``index`` is a weight to train rather than a
        setting (Clip bounds, Resize scales, Pad value) or a shape."""
        return True

    def fresh_input(
        self, node: gs.Node, index: int, values: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray | None:
        """The value constant input ``index`` takes when the model is to be trained from
        scratch (``apply --init scratch``), or None to keep it (settings, shapes, and the
        constants of ops that have no standard initialisation)."""
        return None

    def rewrite(self, node: gs.Node, ctx: RewriteContext) -> None:
        """Rewrite attributes and shape-like inputs after the channels changed."""

    def constant_input_effect(
        self, node: gs.Node, values: np.ndarray
    ) -> tuple[np.ndarray, bool] | None:
        """What input channels holding constants add to the first output, per its channel.

        ``values`` holds, per channel of input 0, the constant it carries (0 for the others).
        Returns (delta, exact): exact when every output element gets exactly ``delta`` (a 1x1
        conv without padding, Gemm, MatMul); otherwise delta is the interior value (padded
        borders differ). None when the op does not sum its input channels linearly.
        """
        return None

    def add_to_output(self, node: gs.Node, delta: np.ndarray, ctx: RewriteContext) -> None:
        """Add ``delta`` (one value per channel of the first output) to that output."""
        raise NotImplementedError(f"{node.op} cannot take an output bias")


def he_normal(values: np.ndarray, fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """He (Kaiming) normal initialisation for a ReLU network: std = sqrt(2 / fan_in)."""
    std = np.sqrt(2.0 / max(fan_in, 1))
    return rng.normal(0.0, std, size=values.shape).astype(values.dtype)


def attr(node: gs.Node, name: str, default: Any = None) -> Any:
    """The node's attribute ``name``, or ``default`` when it is absent."""
    return node.attrs.get(name, default)


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant input, or None for a computed (or missing) one."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def input_at(node: gs.Node, index: int) -> gs.Tensor | None:
    """The node's input ``index``, or None when it is absent or the empty optional input."""
    if index < len(node.inputs) and node.inputs[index].name:
        return node.inputs[index]
    return None


def aligned_axis(tensor_rank: int, operand_rank: int, axis: int) -> int | None:
    """The operand axis that numpy broadcasting aligns with ``axis`` of the full-rank tensor."""
    operand_axis = axis - (tensor_rank - operand_rank)
    return operand_axis if operand_axis >= 0 else None


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def ints(values: Sequence[Any] | np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def const_ints(node: gs.Node, index: int) -> list[int] | None:
    """A constant shape-like input as ints; None when it is absent or computed."""
    value = const_value(input_at(node, index))
    return None if value is None else ints(value)


def tensor_ints(tensor: Any) -> list[int]:
    """A runtime shape-like tensor (a torch tensor from a shape computation) as ints."""
    return [int(v) for v in tensor.reshape(-1).tolist()]


def pass_channels_if_unchanged(node: gs.Node, ctx: ChannelBuilder, why_not: str) -> None:
    """Output channel i is input channel i when the op keeps the rank and the channel dim
    (Resize, Pad, Expand, Tile ...); otherwise the input's channels are pinned with ``why_not``.
    """
    x, out = node.inputs[0], node.outputs[0]
    if ctx.channels(x) is None:
        return
    axis = ctx.axis(x.name)
    in_shape, out_shape = ctx.shape(x.name), ctx.shape(out.name)
    if (
        out_shape is not None
        and len(in_shape) == len(out_shape)
        and in_shape[axis] == out_shape[axis]
    ):
        ctx.alias(out, x)
    else:
        ctx.pin(x, why_not)
