"""FLOPs against an independent count from shapes, parameters against the constants, and the
cost model at other widths against a hand count."""

from __future__ import annotations

from math import prod
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from morphcli.errors import MorphError
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import Model, load_model, model_from_proto
from morphcli.resources.cost import build_cost_model
from morphcli.resources.targets import parse_target
from tests.conftest import input_shapes_for, real_model_paths, sample_model_paths


def independent_flops(model: Model, node: gs.Node) -> float | None:
    """2 * multiply-accumulates of one node, from its tensor shapes alone (batch 1)."""
    shape = lambda t: model.shapes[t.name]  # noqa: E731
    if node.op == "Conv":
        w, y = shape(node.inputs[1]), shape(node.outputs[0])
        return 2 * prod(y) * prod(w[1:])  # each output element: Cin/group * kernel MACs
    if node.op == "ConvTranspose":
        x, w = shape(node.inputs[0]), shape(node.inputs[1])
        return 2 * prod(x) * prod(w[1:])  # each input element scatters Cout/group * kernel
    if node.op == "Gemm":
        a, y = shape(node.inputs[0]), shape(node.outputs[0])
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        return 2 * prod(y) * k
    if node.op == "MatMul":
        a, y = shape(node.inputs[0]), shape(node.outputs[0])
        return 2 * prod(y) * a[-1]
    return None


def all_models() -> list[Path]:
    return real_model_paths() + sample_model_paths()


@pytest.mark.parametrize("path", all_models(), ids=lambda p: p.name)
def test_flops_equal_an_independent_count_for_every_op(path):
    model = load_model(path, input_shapes_for(path))
    cm = build_cost_model(model, build_channel_graph(model))
    per_node = cm.flop_table.by_node(cm.widths)
    expected_total = 0.0
    for node in model.graph.nodes:
        expected = independent_flops(model, node)
        if expected is None:
            assert per_node.get(node.name, 0.0) == 0.0, node.name
            continue
        assert per_node[node.name] == pytest.approx(expected, rel=1e-9), node.name
        expected_total += expected
    assert cm.flops() == pytest.approx(expected_total, rel=1e-9)


@pytest.mark.parametrize("path", all_models(), ids=lambda p: p.name)
def test_params_equal_the_float_constants_the_graph_consumes(path):
    model = load_model(path, input_shapes_for(path))
    cm = build_cost_model(model, build_channel_graph(model))
    consumed = {
        t.name: t
        for node in model.graph.nodes
        for t in node.inputs
        if isinstance(t, gs.Constant) and np.issubdtype(np.dtype(t.dtype), np.floating)
    }
    assert cm.params() == sum(prod(t.shape) for t in consumed.values())


def test_resnet50_totals_are_the_known_figures():
    model = load_model(real_model_paths()[0].parent / "onnx_light_resnet50.onnx")
    cm = build_cost_model(model, build_channel_graph(model))
    assert cm.params() == pytest.approx(25.6e6, rel=0.01)
    assert cm.flops() == pytest.approx(2 * 4.09e9, rel=0.01)


def _small_model() -> Model:
    """x[1,3,8,8] -> conv3x3(3->8, pad 1) -> relu -> conv1x1(8->4) -> flatten -> gemm(256->10)."""
    rng = np.random.default_rng(0)

    def const(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c"], name="c2"),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [const("w1", (8, 3, 3, 3)), const("b1", (8,)), const("w2", (4, 8, 1, 1)),
         const("w3", (10, 256)), const("b3", (10,))],
    )  # fmt: skip
    return model_from_proto(helper.make_model(graph), "small.onnx")


def test_cost_at_other_widths_matches_a_hand_count():
    model = _small_model()
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    (g_a,) = cg.tensor_groups("a")
    (g_c,) = cg.tensor_groups("c")
    alive = cm.widths.astype(float)
    alive[g_a], alive[g_c] = 5, 3
    hw = 64
    flops = 2 * hw * 9 * 3 * 5 + 2 * hw * 5 * 3 + 2 * (3 * hw) * 10
    params = 5 * 3 * 9 + 5 + 3 * 5 + 10 * 3 * hw + 10
    assert cm.flops(alive) == flops
    assert cm.params(alive) == params
    # One more channel of the first group costs its conv3x3 outputs and the 1x1 inputs.
    assert cm.per_channel("flops")[g_a] == 2 * hw * 9 * 3 + 2 * hw * 4


@pytest.mark.parametrize(
    ("text", "reference", "expected"),
    [("50%", 200.0, 100.0), ("1.2G", 0, 1.2e9), ("300M", 0, 3e8), ("45k", 0, 45e3),
     ("12345", 0, 12345.0)],
)  # fmt: skip
def test_parse_target(text, reference, expected):
    assert parse_target(text, reference) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["0", "-5M", "abc", "12Q", "0%"])
def test_parse_target_rejects_bad_values(text):
    with pytest.raises(MorphError):
        parse_target(text, 100.0)
