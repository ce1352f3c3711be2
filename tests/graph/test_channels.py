"""Concrete channel-group structures on real models, and pinning of unknown ops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from morphcli.graph.builder import build_channel_graph
from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model, load_model, model_from_proto
from tests.conftest import REAL_MODELS


def analysed(name: str, shapes=None) -> tuple[Model, ChannelGraph]:
    model = load_model(REAL_MODELS / name, shapes)
    return model, build_channel_graph(model)


def out_groups(model: Model, cg: ChannelGraph, node_name: str) -> list[int]:
    node = next(n for n in model.graph.nodes if n.name == node_name)
    return cg.tensor_groups(node.outputs[0].name)


def nodes_of(model: Model, op: str):
    return [n for n in model.graph.nodes if n.op == op]


def test_residual_stage_convs_share_one_output_group():
    model, cg = analysed("onnx_light_resnet50.onnx")
    # First bottleneck stage: the projection shortcut (n12) and the three blocks' last 1x1
    # convs all feed the same Sum chain, so they produce one group.
    stage = [
        n.name
        for n in nodes_of(model, "Conv")
        if model.shapes[n.outputs[0].name][1:] == (256, 56, 56)
    ]
    assert len(stage) == 4
    groups = {tuple(out_groups(model, cg, name)) for name in stage}
    assert len(groups) == 1, groups
    (gid,) = groups.pop()
    assert cg.groups[gid].width == 256
    assert sorted(cg.groups[gid].producers) == sorted(stage)
    assert cg.groups[gid].prunable


def test_concat_output_is_its_inputs_groups_in_order():
    model, cg = analysed("onnx_light_squeezenet.onnx")
    checked = 0
    for concat in nodes_of(model, "Concat"):
        parts = [g for t in concat.inputs for g in cg.tensor_groups(t.name)]
        assert cg.tensor_groups(concat.outputs[0].name) == parts
        widths = [model.shapes[t.name][1] for t in concat.inputs]
        assert [cg.groups[g].width for g in parts] == widths
        checked += 1
    assert checked == 8


def test_depthwise_conv_ties_input_and_output():
    model, cg = analysed("yolox_nano.onnx")
    depthwise = [
        n for n in nodes_of(model, "Conv")
        if n.attrs.get("group", 1) > 1 and n.attrs["group"] == model.shapes[n.inputs[0].name][1]
    ]  # fmt: skip
    assert depthwise
    for node in depthwise:
        x, y = node.inputs[0].name, node.outputs[0].name
        assert np.array_equal(cg.classes(x), cg.classes(y)), node.name


def test_se_gate_mul_joins_gate_and_features():
    model, cg = analysed("ppocr_mobile_v2.0_cls.onnx", {"x": [1, 3, 48, 192]})
    joined = 0
    for mul in nodes_of(model, "Mul"):
        a, b = mul.inputs
        if a.name in cg.tensors and b.name in cg.tensors:
            sa, sb = model.shapes[a.name], model.shapes[b.name]
            if sa[2:] != sb[2:] and 1 in (sa[2], sb[2]):
                assert np.array_equal(cg.classes(a.name), cg.classes(b.name)), mul.name
                joined += 1
    assert joined >= 9  # one per SE block


def test_channel_shuffle_pins():
    model, cg = analysed("onnx_light_shufflenet.onnx")
    pins = [g.pinned_by for g in cg.groups if g.pinned_by is not None]
    assert any(p.op in ("Reshape", "Transpose") for p in pins)
    # Every group that crosses a shuffle is pinned: no group feeding a shuffle Reshape is free.
    for reshape in nodes_of(model, "Reshape"):
        for gid in cg.tensor_groups(reshape.inputs[0].name):
            assert not cg.groups[gid].prunable, (reshape.name, gid)


def test_vgg_flatten_maps_each_channel_to_49_features():
    model, cg = analysed("onnx_light_vgg19.onnx")
    reshape = nodes_of(model, "Reshape")[0]
    features = cg.tensors[reshape.outputs[0].name]
    assert len(features.slots) == 512 * 49
    assert features.counts.tolist() == [49]
    (gid,) = features.groups.tolist()
    assert cg.groups[gid].width == 512 and cg.groups[gid].prunable
    classes = cg.classes(reshape.outputs[0].name)
    assert np.array_equal(classes.reshape(512, 49), np.repeat(classes[::49], 49).reshape(512, 49))
    fc6 = next(n for n in nodes_of(model, "Gemm") if n.inputs[0] is reshape.outputs[0])
    follows = [f for f in cg.follows if f.node == fc6.name and f.role == "in"]
    assert [f.tensor for f in follows] == [reshape.outputs[0].name]


@pytest.mark.parametrize(
    "name", ["onnx_light_resnet50.onnx", "yolox_nano.onnx", "ultraface_RFB-320.onnx"]
)
def test_graph_outputs_and_inputs_are_pinned(name):
    model, cg = analysed(name)
    for tensor in [*model.graph.inputs, *model.graph.outputs]:
        for gid in cg.tensor_groups(tensor.name):
            assert not cg.groups[gid].prunable, (tensor.name, gid)


def _conv(name: str, x: str, y: str, cin: int, cout: int, rng) -> tuple:
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, 1, 1)).astype(np.float32), name)
    return helper.make_node("Conv", [x, name], [y], name=f"{name}_conv"), w


def _chain_model(nodes: list, weights: list, name: str) -> Model:
    """A checked opset-13 model from x [1,3,4,4] to y [1,2,4,4] with the given nodes."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(proto)
    return model_from_proto(proto, f"{name}.onnx")


def test_unknown_op_pins_its_channels_and_warns():
    rng = np.random.default_rng(0)
    c1, w1 = _conv("w1", "x", "a", 3, 8, rng)
    odd = helper.make_node("LpNormalization", ["a"], ["b"], name="odd", axis=1)
    c2, w2 = _conv("w2", "b", "c", 8, 4, rng)
    c3, w3 = _conv("w3", "c", "y", 4, 2, rng)
    model = _chain_model([c1, odd, c2, c3], [w1, w2, w3], "unknown_op")
    cg = build_channel_graph(model)
    assert any("LpNormalization" in w and "odd" in w for w in cg.warnings)
    (pinned,) = cg.tensor_groups("a")
    assert cg.groups[pinned].pinned_by.node == "odd"
    assert "no channel rule" in cg.groups[pinned].pinned_by.reason
    (free,) = cg.tensor_groups("c")
    assert cg.groups[free].prunable


def test_residual_join_pruned_to_one_channel_stays_one_removable_group():
    """x -> conv a (1 ch) -> Add(a, conv b (1 ch)) -> conv c: a width-1 join is no broadcast."""
    rng = np.random.default_rng(0)
    ca, wa = _conv("wa", "x", "a", 3, 1, rng)
    cb, wb = _conv("wb", "a", "b", 1, 1, rng)
    add = helper.make_node("Add", ["a", "b"], ["s"], name="add")
    cc, wc = _conv("wc", "s", "y", 1, 2, rng)
    model = _chain_model([ca, cb, add, cc], [wa, wb, wc], "width1")
    cg = build_channel_graph(model)
    (group,) = cg.tensor_groups("s")
    assert cg.tensor_groups("a") == cg.tensor_groups("b") == [group]
    assert cg.groups[group].prunable, cg.groups[group].pinned_by
    assert sorted(cg.groups[group].producers) == ["wa_conv", "wb_conv"]


def test_single_channel_broadcast_across_channels_is_pinned():
    """A 1-channel attention map multiplying 8 channels can be neither removed nor widened."""
    rng = np.random.default_rng(0)
    cf, wf = _conv("wf", "x", "f", 3, 8, rng)
    cm, wm = _conv("wm", "x", "m", 3, 1, rng)
    mul = helper.make_node("Mul", ["f", "m"], ["s"], name="attend")
    cy, wy = _conv("wy", "s", "y", 8, 2, rng)
    model = _chain_model([cf, cm, mul, cy], [wf, wm, wy], "attention")
    cg = build_channel_graph(model)
    (attention,) = cg.tensor_groups("m")
    assert cg.groups[attention].pinned_by.node == "attend"
    assert "broadcasts" in cg.groups[attention].pinned_by.reason
    (features,) = cg.tensor_groups("s")
    assert cg.tensor_groups("f") == [features] and cg.groups[features].prunable
