"""OnnxModule against onnxruntime on every real and sample model, and as a trainable module."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from morphcli.errors import MorphError
from morphcli.graph.runtime import session
from morphcli.learn.wrapper import OnnxModule
from tests.conftest import (
    ROOT,
    SAMPLE_MODELS,
    input_shapes_for,
    real_model_paths,
    sample_model_paths,
)

MODELS = real_model_paths() + sample_model_paths()
# onnxruntime's Sigmoid and Exp are accurate to about 1e-7 absolute, not relative: outputs whose
# values all lie below this (sigmoid tails such as yunet's objectness) are compared at 1e-4 of it.
MIN_SCALE = 1e-2
# Detectors fed raw pixels. In [0, 1) yolox works far from its input range, where float32
# rounding noise grows through its 100+ layers to ~1e-4 of the output in both runtimes alike
# (each is as far from a float64 evaluation); at its own range the two agree to ~1e-5.
PIXEL_INPUTS = {"yolox_nano", "yunet_n_320_320"}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a small shared machine, threads waiting on each other make these
    runs many times slower (the results do not depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def _module(path: Path) -> OnnxModule:
    """The module of a model in eval mode, shared by the read-only tests."""
    return OnnxModule.from_onnx(path, input_shapes_for(path)).eval()


@cache
def _session(path: Path) -> ort.InferenceSession:
    return session(_module(path).model.to_proto(), threads=1)


def _inputs(module: OnnxModule, batch: int, seed: int = 0, top: float = 1.0) -> list[np.ndarray]:
    """Image-like inputs uniform in [0, top), the analysed shape with the given batch."""
    rng = np.random.default_rng(seed)
    shapes = module.model.input_shapes
    return [
        (rng.random((batch, *shapes[name][1:])) * top).astype(np.float32)
        for name in module._input_names
    ]


def _onnxruntime(sess: ort.InferenceSession, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs; a file that fixes the batch at 1 runs one sample at a time."""
    declared = [i.shape[0] for i in sess.get_inputs()]
    names = [i.name for i in sess.get_inputs()]
    if all(
        d == x.shape[0] or not isinstance(d, int) for d, x in zip(declared, inputs, strict=True)
    ):
        return sess.run(None, dict(zip(names, inputs, strict=True)))
    rows = [
        sess.run(None, {n: x[i : i + 1] for n, x in zip(names, inputs, strict=True)})
        for i in range(len(inputs[0]))
    ]
    return [np.concatenate(parts) for parts in zip(*rows, strict=True)]


def _run(module: OnnxModule, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*[torch.from_numpy(x) for x in inputs])
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def assert_close(got: list[np.ndarray], want: list[np.ndarray], rel: float = 1e-4) -> None:
    """Each output within ``rel`` of its scale (max |want|, at least MIN_SCALE)."""
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, f"output {k}: shape {g.shape}, onnxruntime {w.shape}"
        scale = max(float(np.abs(w).max()), MIN_SCALE)
        error = np.abs(g.astype(np.float64) - w)
        where = np.unravel_index(int(error.argmax()), error.shape)
        assert error.max() <= rel * scale, (
            f"output {k}: max error {error.max():.3g} ({error.max() / scale:.2e} of scale "
            f"{scale:.3g}) at {where}: got {g[where]}, onnxruntime {w[where]}"
        )


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_eval_outputs_match_onnxruntime(path: Path, batch: int) -> None:
    module = _module(path)
    inputs = _inputs(module, batch, top=255.0 if path.stem in PIXEL_INPUTS else 1.0)
    assert_close(_run(module, inputs), _onnxruntime(_session(path), inputs))


def _logits(path: Path) -> onnx.ModelProto:
    """The model with its final Softmax removed: the logits become the output."""
    proto = onnx.load(str(path))
    graph = proto.graph
    last = next(n for n in graph.node if n.output[0] == graph.output[0].name)
    if last.op_type == "Softmax":
        graph.node.remove(last)
        graph.output[0].name = last.input[0]
    return proto


@pytest.mark.parametrize("name", ["inception_v1", "inception_v2", "shufflenet", "squeezenet"])
def test_light_models_with_random_weights_match_onnxruntime(name: str) -> None:
    """The onnx_light_* files carry equal placeholder weights; random ones make every channel
    differ, and ``to_onnx`` carries them to onnxruntime. Weights get He-scaled normals,
    per-channel vectors and BN statistics values in [0.5, 1.5), so activations keep their size."""
    path = ROOT.parent / "shared" / "real_models" / f"onnx_light_{name}.onnx"
    module = OnnxModule.from_onnx(_logits(path)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if not tensor.is_floating_point() or tensor.dim() == 0:
                continue
            fan_in = tensor.numel() // tensor.shape[0]
            if fan_in > 1:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * math.sqrt(2 / fan_in))
            else:
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
    inputs = _inputs(module, 1)
    want = _onnxruntime(session(module.to_onnx(), threads=1), inputs)
    assert float(want[0].std()) > 1e-3 * float(np.abs(want[0]).max())  # not degenerate
    assert_close(_run(module, inputs), want)


def test_parameters_buffers_and_names() -> None:
    module = _module(SAMPLE_MODELS / "mobilenetv2.onnx")
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    proto = onnx.load(str(SAMPLE_MODELS / "mobilenetv2.onnx"))
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert module.tensor(conv.input[1]) is params[module.onnx_names[conv.input[1]]]
    assert module.tensor(bn.input[1]) is params[module.onnx_names[bn.input[1]]]
    for stat in bn.input[3:5]:
        assert module.onnx_names[stat] in buffers
    clip_bounds = next(n for n in module.model.graph.nodes if n.op == "Clip").inputs[1:]
    assert all(module.onnx_names[t.name] in buffers for t in clip_bounds)
    assert all("." not in key for key in params)
    with pytest.raises(MorphError, match="no constant named"):
        module.tensor("nope")


def test_inputs_by_keyword_and_tuple_outputs() -> None:
    path = ROOT.parent / "shared" / "real_models" / "ultraface_RFB-320.onnx"
    module = _module(path)
    (x,) = _inputs(module, 1)
    with torch.no_grad():
        by_position = module(torch.from_numpy(x))
        by_name = module(input=torch.from_numpy(x))
    assert isinstance(by_position, tuple) and len(by_position) == 2
    assert all(torch.equal(a, b) for a, b in zip(by_position, by_name, strict=True))
    with pytest.raises(TypeError, match="missing model inputs: input"):
        module()


def test_round_trip_without_training_is_bit_exact(tmp_path: Path) -> None:
    """Every initializer comes back with the same bytes, also for Constant-node weights."""
    for path in [
        SAMPLE_MODELS / "resnet.onnx",
        ROOT.parent / "shared" / "real_models" / "ppocr_mobile_v2.0_cls.onnx",
    ]:
        module = OnnxModule.from_onnx(path, input_shapes_for(path))
        target = tmp_path / f"{path.stem}.onnx"
        written = module.to_onnx(target)
        expected = {t.name: t for t in module.model.to_proto().graph.initializer}
        loaded = onnx.load(str(target))
        assert [n.op_type for n in loaded.graph.node] == [n.op_type for n in written.graph.node]
        assert {t.name for t in loaded.graph.initializer} == set(expected)
        for tensor in loaded.graph.initializer:
            want = numpy_helper.to_array(expected[tensor.name])
            got = numpy_helper.to_array(tensor)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), tensor.name
        assert [o.version for o in loaded.opset_import] == [
            o.version for o in onnx.load(str(path)).opset_import
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ppocr_mobile_v2.0_cls.onnx",
        "resnet.onnx",
    ]


def test_gradients_reach_every_parameter() -> None:
    for name in ("resnet", "mobilenetv2", "unet", "flatten_gemm"):
        module = OnnxModule.from_onnx(SAMPLE_MODELS / f"{name}.onnx").train()
        (x,) = _inputs(module, 4)
        module(torch.from_numpy(x)).square().mean().backward()
        dead = [k for k, p in module.named_parameters() if p.grad is None or not p.grad.any()]
        assert not dead, f"{name}: no gradient reaches {dead}"


def test_train_mode_batchnorm_matches_torch() -> None:
    """Batch statistics and the running-statistics update (momentum) of the torch net that
    the ONNX file was exported from."""
    sys.path.insert(0, str(ROOT))
    from sample_models.nets import ResNetStyle

    net = ResNetStyle()
    net.load_state_dict(torch.load(SAMPLE_MODELS / "resnet_fashion_trained.pt"))
    module = OnnxModule.from_onnx(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
    net.train(), module.train()
    x = torch.from_numpy(_inputs(module, 8)[0])
    assert_close([module(x).detach().numpy()], [net(x).detach().numpy()])
    for key, value in net.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(module.tensor(key), value, rtol=1e-5, atol=1e-6)
    module.eval()
    net.eval()
    assert_close([module(x).detach().numpy()], [net(x).detach().numpy()])


def _single(op: str, opset: int, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_dropout_drops_only_in_train_mode() -> None:
    module = OnnxModule.from_onnx(_single("Dropout", 11, ratio=0.25))
    x = torch.rand(8, 64) + 1
    assert torch.equal(module.eval()(x), x)
    y = module.train()(x)
    dropped = y == 0
    assert 0.1 < float(dropped.float().mean()) < 0.4
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.75)


def test_missing_ops_are_all_named() -> None:
    nodes = [
        helper.make_node("Det", ["x"], ["d"], name="det_node"),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("CumSum", ["r", "axis"], ["c"], name="cumsum_node"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [
            helper.make_tensor_value_info("d", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [3, 3]),
        ],
        [numpy_helper.from_array(np.array(0, np.int64), "axis")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(MorphError) as error:
        OnnxModule.from_onnx(proto)
    message = str(error.value)
    assert "2 op type(s)" in message
    assert "CumSum (node 'cumsum_node'" in message and "Det (node 'det_node'" in message


def test_training_lowers_the_loss_and_exports() -> None:
    """300 SGD steps (batch 16) on the Fashion-MNIST subset from the untrained ResNet sample; the
    trained weights, written back to ONNX, run in onnxruntime as in the module."""
    data = np.load(SAMPLE_MODELS / "fashion_mnist_subset.npz")
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    x_val, y_val = torch.from_numpy(data["x_val"][:500]), torch.from_numpy(data["y_val"][:500])
    module = OnnxModule.from_onnx(SAMPLE_MODELS / "resnet.onnx")
    loss_fn = torch.nn.CrossEntropyLoss()

    def val_loss() -> float:
        module.eval()
        with torch.no_grad():
            return float(loss_fn(module(x_val), y_val))

    before = val_loss()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    module.train()
    for _ in range(300):
        idx = torch.randint(len(x), (16,), generator=gen)
        loss = loss_fn(module(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = val_loss()
    assert after < 0.7 * before, f"validation loss {before:.3f} -> {after:.3f}"
    batch = [x_val[:4].numpy()]
    assert_close(_run(module, batch), _onnxruntime(session(module.to_onnx(), threads=1), batch))


def test_deepcopy_copies_tensors_and_keeps_modes_apart() -> None:
    module = OnnxModule.from_onnx(SAMPLE_MODELS / "resnet.onnx").eval()
    clone = copy.deepcopy(module).train()
    x = torch.rand(4, 1, 28, 28)
    before = module(x)
    clone(x)  # a training step on the copy moves its running statistics only
    assert torch.equal(module(x), before)
    key = "stem.1.running_mean"
    assert not torch.equal(clone.tensor(key), module.tensor(key))
    pairs = zip(module.parameters(), clone.parameters(), strict=True)
    assert all(a.data_ptr() != b.data_ptr() for a, b in pairs)


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile unsupported")
def test_torch_compile_captures_one_graph() -> None:
    """Dynamo traces the whole forward as one graph in both modes (the eager backend keeps the
    test fast; inductor's compiled speed is in bench/bench_wrapper.py --compile)."""
    module = OnnxModule.from_onnx(SAMPLE_MODELS / "resnet.onnx")
    reference = copy.deepcopy(module)
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    x = torch.rand(8, 1, 28, 28)
    for training in (True, False):
        module.train(training), reference.train(training)
        torch.testing.assert_close(compiled(x), reference(x))
    key = "stem.1.running_var"
    torch.testing.assert_close(module.tensor(key), reference.tensor(key))


def test_import_morphcli_does_not_import_torch() -> None:
    code = (
        "import sys, morphcli, morphcli.ops, morphcli.graph.builder, morphcli.resources.cost;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert morphcli.OnnxModule.__name__ == 'OnnxModule'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    for path in [
        SAMPLE_MODELS / "resnet.onnx",
        ROOT.parent / "shared" / "real_models" / "pan_mobilenetv3_small.onnx",
    ]:
        module = OnnxModule.from_onnx(path).eval()
        inputs = _inputs(module, 2)
        want = _run(module, inputs)
        module.to("cuda")
        with torch.no_grad():
            got = module(*[torch.from_numpy(x).cuda() for x in inputs])
        got = [t.cpu().numpy() for t in (got if isinstance(got, tuple) else (got,))]
        assert_close(got, want)
