"""Attributing onnxruntime's kernels to the model's nodes, on real sessions: every kernel
has an anchor, fused chains become one unit, and layout kernels join a neighbour."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import load_model
from morphcli.graph.runtime import Runtime
from morphcli.resources.kernels import OriginalGraph, Units, anchors, coverage
from morphcli.resources.measure import time_models
from morphcli.surgery.latency import variant
from tests.conftest import REAL_MODELS, SAMPLE_MODELS


def _attributed(path, widths_of=None):
    model = load_model(path)
    cg = build_channel_graph(model)
    widths = cg.widths() if widths_of is None else widths_of(cg)
    proto = variant(model, cg, widths, seed=0)
    (timing,) = time_models([proto], Runtime(threads=1), model.input_shapes, str(path), runs=1)
    graph = OriginalGraph.of(proto)
    return model, timing, graph, anchors(graph, timing.optimized)


def _odd(cg):
    """Every removable width made odd: onnxruntime leaves its blocked layout for most convs."""
    return np.where(cg.prunable_mask(), np.maximum(1, cg.widths() - 1) | 1, cg.widths())


@pytest.mark.parametrize("widths_of", [None, _odd], ids=["full", "odd widths"])
@pytest.mark.parametrize(
    "path",
    [SAMPLE_MODELS / "resnet_fashion_trained.onnx", REAL_MODELS / "yolox_nano.onnx"],
    ids=lambda p: p.name,
)
def test_every_kernel_has_an_anchor_node(path, widths_of):
    _, timing, graph, anchor_of = _attributed(path, widths_of)
    kernels = {n.name for n in timing.optimized.graph.node}
    assert set(timing.kernels) <= kernels
    missing = sorted(k for k in timing.kernels if k not in anchor_of)
    assert not missing, f"kernels without an anchor: {missing[:5]}"
    assert set(anchor_of.values()) <= set(graph.inputs), "anchors are nodes of the model"
    owner = coverage(graph, set(anchor_of.values()))
    # every node that feeds a kernel's work is owned by exactly one anchor
    assert set(owner) <= set(graph.inputs)
    assert all(owner[a] == a for a in anchor_of.values())


def test_fused_chains_become_one_unit():
    model, _, graph, anchor_of = _attributed(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
    units = Units(graph.order)
    units.add(coverage(graph, set(anchor_of.values())))
    chains = 0
    for node in model.graph.nodes:
        if node.op == "BatchNormalization":
            # onnxruntime folds BN into the conv before it, and a following Relu into both
            conv = node.inputs[0].inputs[0].name
            assert units.find(node.name) == units.find(conv), node.name
            for consumer in node.outputs[0].outputs:
                if consumer.op == "Relu":
                    assert units.find(consumer.name) == units.find(conv), consumer.name
                    chains += 1
    assert chains >= 5
    assert len(units.members(graph.order)) < len(graph.order) / 2


def test_profiled_kernel_times_are_read():
    model = load_model(SAMPLE_MODELS / "plain_cnn.onnx")
    (timing,) = time_models(
        [model.to_proto()], Runtime(threads=1), model.input_shapes, model.path, runs=3
    )
    assert timing.kernels and all(ms >= 0 for ms in timing.kernels.values())
    assert sum(timing.kernels.values()) > 0 and timing.whole_ms > 0
    assert isinstance(timing.optimized, onnx.ModelProto) and timing.optimized.graph.node
