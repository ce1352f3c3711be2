"""The memory footprint a width change is checked against: weights plus batch-1
activations, counted by hand from an onnxruntime run, and exact for a widened model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from morphcli.errors import MorphError
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import load_model
from morphcli.graph.runtime import dummy_inputs, run_model
from morphcli.limits import memory_limit
from morphcli.resources.cost import build_cost_model
from morphcli.resources.memory import check_widths_fit, footprint
from morphcli.surgery.expand import run_expand
from tests.conftest import SAMPLE_MODELS


def _measured(path) -> int:
    """Float weights the graph reads plus every graph input and node output, as run."""
    proto = onnx.load(str(path))
    used = {name for n in proto.graph.node for name in n.input}
    weights = sum(
        onnx.numpy_helper.to_array(t).nbytes
        for t in proto.graph.initializer
        if t.name in used and t.data_type == onnx.TensorProto.FLOAT
    )
    names = [o for n in proto.graph.node for o in n.output if o]
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    model = load_model(path)
    outputs = run_model(proto, dummy_inputs(proto, model.input_shapes))
    inputs = sum(4 * int(np.prod(s)) for s in model.input_shapes.values())
    return weights + inputs + sum(np.asarray(v).nbytes for v in outputs.values())


def _analysed(path):
    model = load_model(path)
    cg = build_channel_graph(model)
    return model, cg, build_cost_model(model, cg)


@pytest.mark.parametrize("name", ["plain_cnn", "resnet_fashion_trained", "mobilenetv2"])
def test_footprint_is_the_weights_and_activations_of_a_run(name, tmp_path):
    path = SAMPLE_MODELS / f"{name}.onnx"
    model, cg, cm = _analysed(path)
    assert footprint(model, cg, cm, cg.widths()) == _measured(path)
    wide = tmp_path / "wide.onnx"
    run_expand(str(path), str(wide), multiplier=2.0)
    doubled = np.where(cg.prunable_mask(), 2 * cg.widths(), cg.widths())
    assert footprint(model, cg, cm, doubled) == _measured(wide)


def test_widths_over_the_memory_limit_are_refused_naming_the_flag():
    model, cg, cm = _analysed(SAMPLE_MODELS / "plain_cnn.onnx")
    wide = np.where(cg.prunable_mask(), 40 * cg.widths(), cg.widths())
    check_widths_fit(model, cg, cm, wide, "--multiplier 40")
    with memory_limit(2**20), pytest.raises(MorphError, match="raise it with --max-memory"):
        check_widths_fit(model, cg, cm, wide, "--multiplier 40")
    huge = np.where(cg.prunable_mask(), 10**4 * cg.widths(), cg.widths())
    with pytest.raises(MorphError, match="more than the 2 GiB one ONNX file holds"):
        check_widths_fit(model, cg, cm, huge, "--multiplier 10000")
