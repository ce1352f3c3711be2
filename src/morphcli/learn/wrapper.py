"""An ONNX graph as a trainable torch module, and its weights back into the ONNX graph.

``OnnxModule.from_onnx(path)`` makes every float constant that is a weight an
``nn.Parameter``, running statistics (which the op rule names) buffers, and every other
constant (settings, indices, shapes) a buffer too, so ``.to(device)`` moves them all. The
forward runs the nodes in topological order with the torch callables the op rules build
(``OpRule.torch_op``); shape subgraphs run on the actual tensors' shapes. ``to_onnx`` writes
the current values into a copy of the graph.
"""

from __future__ import annotations

import copy
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from torch import nn

from morphcli.errors import MorphError
from morphcli.graph.model import Model, load_model, model_from_proto
from morphcli.ops import rule_for
from morphcli.ops.base import Shape
from morphcli.outputs import save_model

# Slot 0 always holds None (an absent optional input reads it); slot 1 takes the values of
# omitted optional outputs, which nothing reads.
_NONE_SLOT, _DISCARD_SLOT = 0, 1


@dataclass
class TorchContext:
    """What an op's torch callable may read besides its inputs.

    ``opset`` and ``shapes`` (the analysis shapes, dynamic dims fixed) are for building the
    callable; ``training`` is set by the module before every forward, so a callable reads it
    when called (BatchNormalization statistics, Dropout). ``sum_over_ranks``, where set, sums
    a tensor over the processes of a data-parallel run, with gradients: training
    normalisation then uses the statistics of the whole global batch (``--sync-bn``).
    """

    opset: int
    shapes: dict[str, Shape]
    training: bool = False
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None

    def shape(self, name: str) -> Shape | None:
        """The analysis shape of tensor ``name``, or None when it is unknown."""
        return self.shapes.get(name)


class OnnxModule(nn.Module):
    """A torch module computing what an ONNX model computes, with its weights trainable.

    Build it with ``OnnxModule.from_onnx``. ``forward`` takes the graph inputs in graph order
    (or as keywords by name) and returns one tensor for one graph output, else a tuple in
    graph order. In eval mode it matches onnxruntime; in train mode BatchNormalization uses
    batch statistics and updates its running statistics, and Dropout drops.
    """

    def __init__(self, model: Model) -> None:
        super().__init__()
        self._model = model
        self._ctx = TorchContext(opset=int(model.graph.opset), shapes=model.shapes)
        slots: dict[str, int] = {"": _NONE_SLOT}
        self._input_names = [t.name for t in model.graph.inputs]
        self._input_slots = [_slot(slots, name) for name in self._input_names]
        constants, steps = self._build_steps(model, slots)
        self._keys: dict[str, str] = {}
        self._param_slots: list[tuple[int, str]] = []
        self._buffer_slots: list[tuple[int, str]] = []
        for name, kind, values in constants:
            key = _attribute_name(name, self)
            tensor = torch.from_numpy(np.array(values))  # a copy: values may be read-only views
            if kind == "parameter":
                self.register_parameter(key, nn.Parameter(tensor))
                self._param_slots.append((_slot(slots, name), key))
            else:
                self.register_buffer(key, tensor)
                self._buffer_slots.append((_slot(slots, name), key))
            self._keys[name] = key
        self._output_slots = [_slot(slots, t.name) for t in model.graph.outputs]
        self._steps = _with_frees(steps, set(self._output_slots))
        self._n_slots = len(slots) + 1

    @classmethod
    def from_onnx(
        cls,
        source: str | os.PathLike | onnx.ModelProto | Model,
        input_shapes: dict[str, list[int]] | None = None,
    ) -> OnnxModule:
        """Build the module from an ONNX file, a ModelProto or a loaded ``Model``.

        Args:
            source: The model.
            input_shapes: Input name -> shape, fixing dynamic dims as ``analyze
                --input-shape`` does (the module itself runs at any batch size). Defaults
                to None.

        Raises:
            MorphError: the model cannot be loaded, or ops have no torch implementation
                (all of them are named at once).
        """
        if isinstance(source, Model):
            if input_shapes:
                raise MorphError("input_shapes apply when loading; this Model is loaded")
            model = source
        elif isinstance(source, onnx.ModelProto):
            model = model_from_proto(source, "<model>", input_shapes)
        else:
            model = load_model(source, input_shapes)
        return cls(model)

    @property
    def model(self) -> Model:
        """The loaded model the module was built from (its graph is never modified)."""
        return self._model

    @property
    def onnx_names(self) -> dict[str, str]:
        """ONNX constant name -> the module attribute holding it (parameter or buffer)."""
        return dict(self._keys)

    def tensor(self, onnx_name: str) -> torch.Tensor:
        """The parameter or buffer holding the ONNX constant ``onnx_name``."""
        key = self._keys.get(onnx_name)
        if key is None:
            raise MorphError(f"the model has no constant named {onnx_name!r}")
        return getattr(self, key)

    def sync_batch_norm(
        self, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> None:
        """Normalise training batches with statistics summed over processes by
        ``sum_over_ranks`` (an autograd-aware all-reduce), or, with None, each process's own."""
        self._ctx.sum_over_ranks = sum_over_ranks

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        """Run the graph: every node's callable on its input slots, in topological order,
        each value dropped after its last reader."""
        env: list[Any] = [None] * self._n_slots
        for slot, value in zip(self._input_slots, self._bind(args, kwargs), strict=True):
            env[slot] = value
        params, buffers = self._parameters, self._buffers
        for slot, key in self._param_slots:
            env[slot] = params[key]
        for slot, key in self._buffer_slots:
            env[slot] = buffers[key]
        self._ctx.training = self.training
        for fn, ins, outs, frees in self._steps:
            values = fn(*[env[i] for i in ins])
            # A callable returns its node's leading outputs; the rest are omitted optionals.
            for slot, value in zip(outs, values, strict=False):
                env[slot] = value
            for slot in frees:
                env[slot] = None
        outputs = tuple(env[slot] for slot in self._output_slots)
        return outputs[0] if len(outputs) == 1 else outputs

    def to_onnx(self, path: str | os.PathLike | None = None) -> onnx.ModelProto:
        """The model with the module's current values, written atomically to ``path`` if given.

        The graph, opsets and metadata are the loaded model's; without training the values
        are bit-identical to the loaded ones.
        """
        graph = self._model.graph.copy()
        tensors = graph.tensors()
        for name, key in self._keys.items():
            value = getattr(self, key).detach().cpu().numpy()
            tensors[name].values = np.array(value, copy=True)
        proto = replace(self._model, graph=graph).to_proto()
        if path is not None:
            save_model(proto, path)
        return proto

    def __deepcopy__(self, memo: dict) -> OnnxModule:
        """Parameters and buffers are copied; the loaded model (read-only, and a
        graphsurgeon graph cannot be deep-copied) and the op callables are shared. Shared
        callables are safe: every forward sets the context's training flag first."""
        for shared in (self._model, self._ctx, self._steps):
            memo[id(shared)] = shared
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__setstate__(copy.deepcopy(self.__dict__, memo))
        return clone

    def _bind(self, args: tuple, kwargs: dict) -> tuple:
        names = self._input_names
        if not kwargs and len(args) == len(names):
            return args
        if len(args) > len(names):
            raise TypeError(f"the model takes {len(names)} inputs ({', '.join(names)})")
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"unexpected or repeated input {name!r} (inputs: {names})")
            values[name] = value
        missing = [name for name in names if name not in values]
        if missing:
            raise TypeError(f"missing model inputs: {', '.join(missing)}")
        return tuple(values[name] for name in names)

    def _build_steps(
        self, model: Model, slots: dict[str, int]
    ) -> tuple[list[tuple[str, str, np.ndarray]], list[tuple]]:
        """One (callable, input slots, output slots) per node, and every constant's name,
        kind ("parameter", "state" or "fixed") and value."""
        kinds: dict[str, str] = {}
        values: dict[str, np.ndarray] = {}
        steps, missing = [], defaultdict(list)
        for node in model.graph.nodes:
            rule = rule_for(node.op, node.domain)
            for index, tensor in enumerate(node.inputs):
                if isinstance(tensor, gs.Constant):
                    values[tensor.name] = tensor.values
                    kinds[tensor.name] = _stronger(
                        kinds.get(tensor.name), _kind(rule, node, index, tensor)
                    )
            if rule is None:
                missing[node.op].append((node.name, "no rule"))
                continue
            try:
                fn = rule.torch_op(node, self._ctx)
            except NotImplementedError as error:
                missing[node.op].append((node.name, str(error)))
                continue
            ins = tuple(_slot(slots, t.name) for t in node.inputs)
            outs = tuple(_slot(slots, t.name) if t.name else _DISCARD_SLOT for t in node.outputs)
            steps.append((fn, ins, outs))
        if missing:
            raise MorphError(_missing_message(missing), file=model.path)
        for tensor in model.graph.outputs:
            if isinstance(tensor, gs.Constant) and tensor.name not in kinds:
                kinds[tensor.name], values[tensor.name] = "fixed", tensor.values
        return [(name, kind, values[name]) for name, kind in kinds.items()], steps


def _slot(slots: dict[str, int], name: str) -> int:
    if name not in slots:
        slots[name] = len(slots) + 1  # slot 1 is the discard slot
    return slots[name]


def _kind(rule: Any, node: gs.Node, index: int, tensor: gs.Constant) -> str:
    if rule is None:
        return "fixed"
    if index in rule.state_inputs(node):
        return "state"
    floating = np.issubdtype(np.dtype(tensor.dtype), np.floating)
    return "parameter" if floating and rule.trainable_input(node, index) else "fixed"


def _stronger(old: str | None, new: str) -> str:
    """Running state wins over a weight, a weight over a setting (a constant used twice)."""
    order = ("fixed", "parameter", "state")
    return new if old is None else max(old, new, key=order.index)


def _attribute_name(onnx_name: str, module: nn.Module) -> str:
    """A valid, unused attribute name for an ONNX tensor name ('.' and '/' become '_')."""
    base = re.sub(r"\W", "_", onnx_name)
    if not base or base[0].isdigit():
        base = f"t_{base}"
    key, n = base, 1
    while hasattr(module, key):
        n += 1
        key = f"{base}_{n}"
    return key


def _with_frees(steps: list[tuple], keep: set[int]) -> list[tuple]:
    """Add to each step the slots to clear after it: values nothing reads any more."""
    last_use: dict[int, int] = {}
    for index, (_, ins, outs) in enumerate(steps):
        for slot in (*ins, *outs):
            last_use[slot] = index
    frees: list[list[int]] = [[] for _ in steps]
    for slot, index in last_use.items():
        if slot not in keep and slot != _NONE_SLOT:
            frees[index].append(slot)
    return [
        (fn, ins, outs, tuple(free)) for (fn, ins, outs), free in zip(steps, frees, strict=True)
    ]


def _missing_message(missing: dict[str, list[tuple[str, str]]]) -> str:
    parts = []
    for op, nodes in sorted(missing.items()):
        name, reason = nodes[0]
        more = f" and {len(nodes) - 1} more" if len(nodes) > 1 else ""
        parts.append(f"{op} (node {name!r}{more}: {reason})")
    return f"no torch implementation for {len(missing)} op type(s): " + "; ".join(parts)
