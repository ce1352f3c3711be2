"""Surgery is exact: a model with channels removed computes what the original computes with
those channels forced to zero, and a widened model computes the original's function."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from morphcli.errors import EXIT_INTERNAL, MorphError
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.channels import FILTER, IN, ChannelGraph
from morphcli.graph.model import Model, load_model, model_from_proto
from morphcli.graph.runtime import dummy_inputs, run_model
from morphcli.surgery.apply import Init, apply_copies, check_result
from morphcli.surgery.index_maps import index_map
from tests.conftest import input_shapes_for, real_model_paths, sample_model_paths

# Graph-only models carry placeholder weights (every filter equal): random weights make
# every channel matter, and their final Softmax is dropped so the logits are compared.
GRAPH_ONLY_PREFIX = "onnx_light_"
TOLERANCE = 1e-4
NOISE_FACTOR = 4.0


def _without_final_softmax(proto: onnx.ModelProto) -> onnx.ModelProto:
    outputs = {o.name: o for o in proto.graph.output}
    for node in list(proto.graph.node):
        if node.op_type == "Softmax" and node.output[0] in outputs:
            outputs[node.output[0]].name = node.input[0]
            proto.graph.node.remove(node)
    return proto


def randomize_weights(model: Model, cg: ChannelGraph, seed: int = 5) -> None:
    """He-normal filters and per-channel parameters in [0.5, 1.5] (valid BN variances)."""
    rng = np.random.default_rng(seed)
    constants = model.graph.tensors()
    roles: dict[str, dict[int, str]] = {}
    for follow in cg.follows:
        roles.setdefault(follow.const, {})[follow.axis] = follow.role
    for name, axes in roles.items():
        const = constants[name]
        shape, dtype = const.values.shape, const.values.dtype
        if FILTER in axes.values() or IN in axes.values():
            out_axis = next((a for a, r in axes.items() if r == FILTER), None)
            fan_in = max(int(np.prod(shape)) // (shape[out_axis] if out_axis is not None else 1), 1)
            values = rng.standard_normal(shape, dtype=np.float32)
            values *= np.float32(np.sqrt(2.0 / fan_in))
            const.values = values.astype(dtype, copy=False)
        else:
            const.values = rng.uniform(0.5, 1.5, shape).astype(dtype)


def load_for_surgery(path: Path) -> tuple[Model, ChannelGraph]:
    """The model and its channel graph; graph-only models get random weights and logits."""
    if not path.name.startswith(GRAPH_ONLY_PREFIX):
        model = load_model(path, input_shapes_for(path))
        return model, build_channel_graph(model)
    proto = _without_final_softmax(onnx.load(str(path)))
    model = model_from_proto(proto, str(path), input_shapes_for(path))
    cg = build_channel_graph(model)
    randomize_weights(model, cg)
    return model, cg


def random_removal(cg: ChannelGraph, seed: int = 0) -> list[np.ndarray]:
    """Remove a random subset (1 to half the width, at least one kept) of every removable group."""
    rng = np.random.default_rng(seed)
    copies = []
    for group in cg.groups:
        counts = np.ones(group.width, dtype=np.int64)
        if group.prunable and group.width > 1:
            k = int(rng.integers(1, max(2, group.width // 2) + 1))
            counts[rng.choice(group.width, size=min(k, group.width - 1), replace=False)] = 0
        copies.append(counts)
    return copies


def masked_reference(model: Model, cg: ChannelGraph, copies: list[np.ndarray]) -> onnx.ModelProto:
    """The original model with removed channels forced to zero: a Mul by a 0/1 mask after
    every node output that holds a removed class. (Masking only where a class is produced
    would not do: a BN or bias after the producer turns the zero into a shift that the
    pruned model does not compute.)"""
    removed = np.zeros(len(cg.class_of_slot), dtype=bool)
    for group, counts in zip(cg.groups, copies, strict=True):
        removed[group.classes[counts == 0]] = True
    graph = model.graph.copy()
    tensors = graph.tensors()
    for name, channels in cg.tensors.items():
        tensor = tensors[name]
        keep = ~removed[cg.classes(name)]
        if keep.all() or not tensor.inputs:
            continue
        shape = [1] * len(model.shapes[name])
        shape[channels.axis] = -1
        before = gs.Variable(f"{name}__unmasked", dtype=model.dtypes[name])
        producer = tensor.inputs[0]
        producer.outputs[producer.outputs.index(tensor)] = before
        mask = gs.Constant(f"{name}__mask", keep.astype(model.dtypes[name]).reshape(shape))
        graph.nodes.append(
            gs.Node("Mul", f"{name}__masking", inputs=[before, mask], outputs=[tensor])
        )
    graph.toposort()
    return dataclasses.replace(model, graph=graph).to_proto()


def assert_outputs_close(
    want: dict, got: dict, label: str, noise: Callable[[], float] | None = None
) -> None:
    """max |want - got| < TOLERANCE * scale, scale = the largest |output| of the model.

    ``noise`` (called only when that fails) gives the model's own float32 noise: where
    4x that is larger, it is the tolerance (a sensitive model on random inputs).
    """
    scale = max(float(np.abs(v).max()) for v in want.values()) or 1.0
    tolerance = TOLERANCE * scale
    worst = max(float(np.abs(v.astype(np.float64) - got[k]).max()) for k, v in want.items())
    if worst >= tolerance and noise is not None:
        tolerance = max(tolerance, NOISE_FACTOR * noise())
    for name, value in want.items():
        diff = np.abs(value.astype(np.float64) - got[name])
        where = np.unravel_index(int(np.argmax(diff)), diff.shape)
        assert diff.max() < tolerance, (
            f"{label}: output {name} differs by {diff.max():.3g} at {where} "
            f"(scale {scale:.3g}, tolerance {tolerance:.3g})"
        )


def float32_noise(proto: onnx.ModelProto, model: Model, seed: int = 3) -> float:
    """How far the model's own outputs move between onnxruntime's optimised and plain
    kernels: the float32 rounding noise any rewrite of the model is up against."""
    feeds = dummy_inputs(proto, model.input_shapes, seed)
    outputs = []
    for level in (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        sess = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        outputs.append(sess.run(None, feeds))
    return max(float(np.abs(a - b).max()) for a, b in zip(*outputs, strict=True))


def run(proto: onnx.ModelProto, model: Model, seed: int = 3) -> dict[str, np.ndarray]:
    return run_model(proto, dummy_inputs(proto, model.input_shapes, seed))


def widths(proto: onnx.ModelProto, model: Model) -> np.ndarray:
    result = model_from_proto(proto, "result", model.input_shapes)
    return build_channel_graph(result).widths()


# Index maps -------------------------------------------------------------------------------
def test_index_map_emits_each_run_once_per_copy():
    # A flatten-like tensor: class 7 holds 2 features, class 9 holds 3.
    classes = np.array([7, 7, 9, 9, 9])
    copies = np.zeros(10, dtype=np.int64)
    copies[7], copies[9] = 2, 1
    imap = index_map(classes, copies)
    assert imap.old_index.tolist() == [0, 1, 0, 1, 2, 3, 4]
    assert imap.replica.tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert imap.copies.tolist() == [2, 2, 2, 2, 1, 1, 1]
    copies[7] = 0
    assert index_map(classes, copies).old_index.tolist() == [2, 3, 4]


def test_copy_counts_are_validated():
    model = load_model(sample_model_paths()[0])
    cg = build_channel_graph(model)
    ones = [np.ones(g.width, dtype=np.int64) for g in cg.groups]
    pinned = next(g.id for g in cg.groups if not g.prunable)
    removable = next(g.id for g in cg.groups if g.prunable)
    bad_pinned = [c.copy() for c in ones]
    bad_pinned[pinned][0] = 2
    with pytest.raises(ValueError, match="cannot change width"):
        apply_copies(model, cg, bad_pinned)
    empty = [c.copy() for c in ones]
    empty[removable][:] = 0
    with pytest.raises(ValueError, match="every channel removed"):
        apply_copies(model, cg, empty)


# Exactness on every sample and real model ------------------------------------------------
EVERY_MODEL = sample_model_paths() + real_model_paths()


@pytest.mark.parametrize("path", EVERY_MODEL, ids=lambda p: p.name)
def test_removed_channels_equal_channels_forced_to_zero(path):
    model, cg = load_for_surgery(path)
    copies = random_removal(cg, seed=len(path.name))
    pruned = apply_copies(model, cg, copies)
    reference = masked_reference(model, cg, copies)
    assert_outputs_close(run(reference, model), run(pruned, model), path.name)
    expected = [int(c.sum()) for c in copies]
    assert widths(pruned, model).tolist() == expected


def test_input_model_and_io_are_kept():
    path = next(p for p in sample_model_paths() if p.stem == "resnet")
    model = load_model(path)
    cg = build_channel_graph(model)
    before = {
        t.name: np.array(t.values)
        for t in model.graph.tensors().values()
        if isinstance(t, gs.Constant)
    }
    proto = apply_copies(model, cg, random_removal(cg))
    original = onnx.load(str(path))
    for name, value in before.items():
        assert np.array_equal(np.asarray(model.graph.tensors()[name].values), value), name
    assert [(i.name, i.type) for i in proto.graph.input] == [
        (i.name, i.type) for i in original.graph.input
    ]
    assert [(o.name, o.type) for o in proto.graph.output] == [
        (o.name, o.type) for o in original.graph.output
    ]
    assert list(proto.opset_import) == list(original.opset_import)
    assert proto.producer_name == original.producer_name
    assert list(proto.metadata_props) == list(original.metadata_props)


def test_a_broken_result_is_an_internal_error():
    path = next(p for p in sample_model_paths() if p.stem == "plain_cnn")
    model = load_model(path)
    proto = model.to_proto()
    weight = next(i for i in proto.graph.initializer if len(i.dims) == 4)
    weight.CopyFrom(numpy_helper.from_array(np.zeros((3, 3, 3, 3), np.float32), weight.name))
    with pytest.raises(MorphError) as caught:
        check_result(proto, model)
    assert caught.value.exit_code == EXIT_INTERNAL
    assert "surgery failed" in str(caught.value)


# Widening ---------------------------------------------------------------------------------
def doubled(cg: ChannelGraph) -> list[np.ndarray]:
    return [np.full(g.width, 2 if g.prunable else 1, dtype=np.int64) for g in cg.groups]


@pytest.mark.parametrize("stem", ["resnet", "mobilenetv2", "flatten_gemm", "unet", "inception"])
def test_noise_keeps_the_function_and_makes_replicas_differ(stem):
    path = next(p for p in sample_model_paths() if p.stem == stem)
    model = load_model(path)
    cg = build_channel_graph(model)
    plain = apply_copies(model, cg, doubled(cg))
    noisy = apply_copies(model, cg, doubled(cg), Init(noise=0.1, seed=1))
    assert_outputs_close(run(model.to_proto(), model), run(noisy, model), stem)
    plain_w = {i.name: numpy_helper.to_array(i) for i in plain.graph.initializer}
    noisy_w = {i.name: numpy_helper.to_array(i) for i in noisy.graph.initializer}
    changed = [n for n in plain_w if not np.allclose(plain_w[n], noisy_w[n])]
    assert changed, "noise changed no weight"


def test_random_init_keeps_the_function_with_fresh_filters():
    path = next(p for p in sample_model_paths() if p.stem == "plain_cnn")
    model = load_model(path)
    cg = build_channel_graph(model)
    widened = apply_copies(model, cg, doubled(cg), Init("random", seed=2))
    assert_outputs_close(run(model.to_proto(), model), run(widened, model), "random init")
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    old = np.asarray(conv.inputs[1].values)
    new = next(
        numpy_helper.to_array(i)
        for i in widened.graph.initializer
        if numpy_helper.to_array(i).shape == (2 * old.shape[0], *old.shape[1:])
    )
    # Each replica follows its original: [a, a', b, b', ...].
    assert np.array_equal(new[0::2], old)
    assert not np.allclose(new[1::2], old)
    assert 0.5 < new[1::2].std() / old.std() < 2.0


# Rewritten attributes and shape-like inputs ------------------------------------------------
def _channel_ops_model(opset: int) -> onnx.ModelProto:
    """Conv -> Split -> (Gather | Slice) -> Concat -> Reshape there and back -> Expand ->
    Resize -> Conv -> Flatten -> Gemm: every rewrite on one removable tensor family."""
    rng = np.random.default_rng(0)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    def weight(name, *shape):
        return const(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))

    inits = [weight("w1", 8, 3, 1, 1), weight("b1", 8), weight("w2", 4, 6, 3, 3),
             weight("w3", 10, 4 * 16), weight("b3", 10)]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
    ]
    if opset >= 13:
        inits += [const("split", np.array([3, 5], np.int64)), const("idx", np.array([2, 0, 1])),
                  const("st", np.array([1])), const("en", np.array([4])),
                  const("ax", np.array([1])),
                  const("flat", np.array([1, 6, 64])), const("back", np.array([1, 6, 8, 8])),
                  const("exp", np.array([1, 6, 1, 1])),
                  const("sizes", np.array([1, 6, 4, 4], np.int64))]  # fmt: skip
        nodes += [
            helper.make_node("Split", ["r1", "split"], ["s1", "s2"], axis=1),
            helper.make_node("Gather", ["s1", "idx"], ["g"], axis=1),
            helper.make_node("Slice", ["s2", "st", "en", "ax"], ["sl"]),
            helper.make_node("Concat", ["g", "sl"], ["cat"], axis=1),
            helper.make_node("Reshape", ["cat", "flat"], ["flat_out"]),
            helper.make_node("Reshape", ["flat_out", "back"], ["back_out"]),
            helper.make_node("Expand", ["back_out", "exp"], ["e"]),
            helper.make_node("Resize", ["e", "", "", "sizes"], ["rs"], mode="nearest"),
        ]
    else:
        nodes += [
            helper.make_node("Split", ["r1"], ["s1", "s2"], axis=1, split=[3, 5]),
            helper.make_node("Slice", ["s2"], ["sl"], starts=[1], ends=[4], axes=[1]),
            helper.make_node("Concat", ["s1", "sl"], ["cat"], axis=1),
            helper.make_node("MaxPool", ["cat"], ["rs"], kernel_shape=[2, 2], strides=[2, 2]),
        ]
    nodes += [
        helper.make_node("Conv", ["rs", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "channel_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [9, 17])
def test_split_slice_gather_reshape_expand_resize_are_rewritten(opset):
    model = model_from_proto(_channel_ops_model(opset), f"channel_ops_{opset}")
    cg = build_channel_graph(model)
    assert sum(g.prunable for g in cg.groups) == 4  # Split halves, sliced part, conv2
    for seed in range(3):
        copies = random_removal(cg, seed)
        pruned = apply_copies(model, cg, copies)
        reference = masked_reference(model, cg, copies)
        assert_outputs_close(run(reference, model), run(pruned, model), f"pruned {seed}")
    rng = np.random.default_rng(1)
    mixed = [rng.integers(0, 3, g.width) if g.prunable else np.ones(g.width, np.int64)
             for g in cg.groups]  # fmt: skip
    for counts in mixed:
        counts[0] = max(counts[0], 1)
    widened = apply_copies(model, cg, mixed)
    reference = masked_reference(model, cg, mixed)
    assert_outputs_close(run(reference, model), run(widened, model), "mixed copies")


def test_split_with_num_outputs_gets_explicit_sizes():
    w = numpy_helper.from_array(np.ones((6, 2, 1, 1), np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("Split", ["c"], ["a", "b"], axis=1, num_outputs=2),
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Conv", ["s", "w2"], ["y"]),
        ],
        "split18",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [w, w2],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = model_from_proto(proto, "split18")
    cg = build_channel_graph(model)
    copies = random_removal(cg, 4)
    pruned = apply_copies(model, cg, copies)
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    assert not any(a.name == "num_outputs" for a in split.attribute)
    assert_outputs_close(run(masked_reference(model, cg, copies), model), run(pruned, model), "")


def _conv_then(nodes: list, inits: list, out_shape: list[int], opset: int = 17) -> Model:
    """x [1, 2, 4, 4] -> 1x1 conv to 6 channels "c" -> ``nodes`` -> "y"."""
    w = numpy_helper.from_array(np.ones((6, 2, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), *nodes],
        "conv_then",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [w, *inits],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model_from_proto(proto, "conv_then")


def test_a_strided_channel_slice_pins_its_input():
    ints = [numpy_helper.from_array(np.array(v), n) for n, v in
            (("s", [0]), ("e", [6]), ("a", [1]), ("st", [2]))]  # fmt: skip
    w2 = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w2")
    model = _conv_then(
        [
            helper.make_node("Slice", ["c", "s", "e", "a", "st"], ["sl"]),
            helper.make_node("Conv", ["sl", "w2"], ["y"]),
        ],
        [*ints, w2],
        [1, 2, 4, 4],
    )
    cg = build_channel_graph(model)
    groups = [cg.groups[g] for g in cg.tensor_groups("c")]  # kept and skipped channels
    assert len(groups) == 2
    assert all(not g.prunable and "step 2" in g.pinned_by.reason for g in groups)


def test_a_computed_reshape_target_is_rewritten_or_pins():
    shape_chain = [
        helper.make_node("Shape", ["c"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["flat"]),
    ]
    zero = numpy_helper.from_array(np.array([0]), "zero")
    # [N, 6*16] from a shape chain: the channel count stays computed, surgery writes [0, -1].
    flat = numpy_helper.from_array(np.array([96]), "rest")
    w3 = numpy_helper.from_array(np.ones((96, 3), np.float32), "w3")
    model = _conv_then(
        [*shape_chain, helper.make_node("MatMul", ["flat", "w3"], ["y"])], [zero, flat, w3], [1, 3]
    )
    cg = build_channel_graph(model)
    copies = random_removal(cg, 2)
    pruned = apply_copies(model, cg, copies)
    assert_outputs_close(run(masked_reference(model, cg, copies), model), run(pruned, model), "")
    # [N, 6, 4, 4] -> [N, 6, 2, 2, 4] from a shape chain: [0, 0, -1] cannot say it: pinned.
    split = numpy_helper.from_array(np.array([6, 2, 2, 4]), "rest")
    model = _conv_then([*shape_chain[:-1], helper.make_node("Reshape", ["c", "target"], ["y"])],
                       [zero, split], [1, 6, 2, 2, 4])  # fmt: skip
    cg = build_channel_graph(model)
    (group,) = cg.tensor_groups("c")
    assert "computed shape" in cg.groups[group].pinned_by.reason
