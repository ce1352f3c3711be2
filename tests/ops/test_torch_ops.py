"""Every op rule's torch implementation against onnxruntime on single-node models.

Each case is one node built with onnx.helper: plain arrays are graph inputs (fed at run time,
so shape-like ones take the computed path), ``C(array)`` marks a constant input (pre-parsed
when the module is built), ``S(shape)`` a shape computed by a Shape node from a fed tensor of
that shape (as in exported shape chains), and None an absent optional input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from morphcli.graph.runtime import run_model
from morphcli.learn.wrapper import OnnxModule
from morphcli.ops import REGISTRY
from morphcli.ops.reshape import batch_scaled

RNG = np.random.default_rng(0)
I64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class C:
    """A constant (initializer) input."""

    value: np.ndarray


@dataclass(frozen=True)
class S:
    """An input computed as Shape(t) of a fed tensor t of this shape."""

    shape: tuple[int, ...]


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def pos(*shape: int) -> np.ndarray:
    return (RNG.random(shape) + 0.1).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def case(op: str, *inputs, opset: int = 17, outputs: int = 1, name: str = "", **attrs):
    return pytest.param(op, inputs, opset, outputs, attrs, id=f"{op}-{name or opset}")


X4 = r(2, 3, 7, 9)
W3 = r(4, 3, 3, 3)
TIES = np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)

CASES = [
    # Conv
    case("Conv", X4, C(W3), C(r(4)), pads=[1, 1, 1, 1], name="bias"),
    case("Conv", X4, C(W3), strides=[2, 2], dilations=[2, 1], name="stride-dilation"),
    case("Conv", X4, C(r(6, 1, 3, 3)), group=3, pads=[0, 1, 2, 0], name="grouped-asym"),
    case("Conv", X4, C(W3), auto_pad="SAME_UPPER", strides=[2, 2], name="same-upper"),
    case("Conv", X4, C(r(4, 3, 2, 2)), auto_pad="SAME_LOWER", strides=[2, 2], name="same-lower"),
    case("Conv", X4, C(W3), auto_pad="VALID", name="valid"),
    case("Conv", r(2, 3, 10), C(r(4, 3, 3)), C(r(4)), pads=[2, 1], name="1d"),
    case("Conv", r(1, 2, 5, 5, 5), C(r(3, 2, 3, 3, 3)), pads=[1] * 6, name="3d"),
    case("Conv", X4, W3, name="computed-weight"),
    # ConvTranspose
    case("ConvTranspose", X4, C(r(3, 4, 2, 2)), C(r(4)), strides=[2, 2], name="unet"),
    case(
        "ConvTranspose",
        X4,
        C(r(3, 2, 3, 3)),
        C(r(2)),
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
        name="output-padding",
    ),
    case("ConvTranspose", X4, C(r(3, 2, 3, 3)), strides=[2, 2], pads=[0, 1, 1, 0], name="asym"),
    case(
        "ConvTranspose",
        X4,
        C(r(3, 2, 3, 3)),
        C(r(2)),
        strides=[2, 2],
        output_shape=[15, 18],
        name="output-shape",
    ),
    case("ConvTranspose", X4, C(r(3, 2, 3, 3)), strides=[2, 2], auto_pad="SAME_UPPER", name="same"),
    case("ConvTranspose", r(2, 4, 5, 5), C(r(4, 3, 3, 3)), group=2, dilations=[2, 2], name="group"),
    # Gemm, MatMul
    case("Gemm", r(5, 6), C(r(4, 6)), C(r(4)), transB=1, name="linear"),
    case("Gemm", r(6, 5), C(r(6, 4)), C(r(5, 4)), transA=1, alpha=0.5, beta=2.0, name="general"),
    case("Gemm", r(5, 6), C(r(6, 4)), C(r(1)), name="scalar-bias"),
    case("Gemm", r(5, 6), C(r(4, 6)), transB=1, opset=13, name="no-bias"),
    case("MatMul", r(5, 6), C(r(6, 4)), name="2d"),
    case("MatMul", r(2, 3, 5, 6), r(3, 6, 4), name="batched"),
    # Normalisation
    case("BatchNormalization", X4, C(r(3)), C(r(3)), C(r(3)), C(pos(3)), epsilon=1e-3),
    case("BatchNormalization", X4, C(r(3)), C(r(3)), C(r(3)), C(pos(3)), opset=9),
    case("InstanceNormalization", X4, C(r(3)), C(r(3)), epsilon=1e-3),
    case("LRN", r(2, 7, 4, 4), size=5, alpha=1e-3, beta=0.6, bias=2.0, name="odd"),
    # Unary
    *[
        case(op, r(3, 4, 5), opset=18)
        for op in [
            "Relu",
            "Sigmoid",
            "HardSwish",
            "Tanh",
            "Softplus",
            "Softsign",
            "Exp",
            "Neg",
            "Abs",
            "Erf",
            "Mish",
            "Floor",
            "Ceil",
            "Sign",
            "Sin",
            "Cos",
            "Identity",
        ]
    ],
    *[case(op, pos(3, 4, 5)) for op in ["Log", "Sqrt", "Reciprocal"]],
    case("Round", f32(-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, 0.6)),
    case("LeakyRelu", r(3, 4), alpha=0.2),
    case("Elu", r(3, 4), alpha=0.5),
    case("Celu", r(3, 4), alpha=2.0),
    case("ThresholdedRelu", r(3, 4), alpha=0.5),
    case("HardSigmoid", r(3, 4) * 4, alpha=0.3, beta=0.4),
    case("Selu", r(3, 4), name="default"),
    case("Selu", r(3, 4), alpha=2.0, gamma=3.0, name="custom"),
    case("Gelu", r(3, 4), opset=20, name="exact"),
    case("Gelu", r(3, 4), opset=20, approximate="tanh", name="tanh"),
    case("Cast", r(3, 4) * 5, to=onnx.TensorProto.INT64, name="to-int64"),
    case("Cast", i64(-3, 0, 7), to=onnx.TensorProto.FLOAT, name="to-float"),
    case("Cast", f32(0, 1.5, -2), to=onnx.TensorProto.BOOL, name="to-bool"),
    case("Cast", r(3, 4), to=onnx.TensorProto.FLOAT16, name="to-half"),
    case("Clip", r(3, 4), opset=6, min=-0.5, max=0.5, name="attrs"),
    case("Clip", r(3, 4) * 8, C(f32(0)[0]), C(f32(6)[0]), opset=11, name="relu6"),
    case("Clip", r(3, 4), None, C(f32(0.3)[0]), opset=13, name="max-only"),
    case("Clip", r(3, 4), f32(-0.2)[0], name="computed-min"),
    case("Clip", i64(-5, 0, 5, 9), C(i64(0)[0]), C(i64(6)[0]), name="int"),
    case("Dropout", r(3, 4), opset=11, ratio=0.3, name="attr"),
    case("Dropout", r(3, 4), C(f32(0.3)[0]), outputs=2, name="mask"),
    # Softmax family
    case("Softmax", r(2, 3, 4, 5), opset=11, axis=2, name="legacy-axis2"),
    case("Softmax", r(2, 3, 4), opset=11, name="legacy-default"),
    case("Softmax", r(2, 3, 4), opset=13, axis=1, name="axis1"),
    case("LogSoftmax", r(2, 3, 4), opset=13),
    case("LogSoftmax", r(2, 3, 4), opset=11, axis=1, name="legacy"),
    case("Hardmax", r(2, 3, 4), opset=13),
    case("Hardmax", r(2, 3, 4), opset=11, axis=1, name="legacy"),
    # Pools
    case("MaxPool", X4, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="pads"),
    case("MaxPool", X4, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="ceil"),
    case("MaxPool", X4, kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], name="asym"),
    case("MaxPool", X4, kernel_shape=[2, 2], dilations=[2, 2], name="dilated"),
    case("MaxPool", X4, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER", name="same"),
    case("MaxPool", r(2, 3, 9), kernel_shape=[3], name="1d"),
    case("MaxPool", r(1, 2, 5, 6, 7), kernel_shape=[2, 2, 2], strides=[2, 2, 2], name="3d"),
    case("AveragePool", X4, kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="exclude-pad"),
    case(
        "AveragePool",
        X4,
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        count_include_pad=1,
        name="include-pad",
    ),
    case("AveragePool", X4, kernel_shape=[7, 7], pads=[0, 0, 1, 1], name="asym"),
    case(
        "AveragePool",
        X4,
        kernel_shape=[3, 3],
        pads=[0, 0, 1, 1],
        count_include_pad=1,
        name="asym-include",
    ),
    case("AveragePool", X4, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="ceil"),
    case(
        "AveragePool", X4, kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER", name="same"
    ),
    case("LpPool", X4, kernel_shape=[2, 2], p=2, name="p2"),
    case("LpPool", X4, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], p=1, name="p1"),
    case("GlobalAveragePool", X4),
    case("GlobalMaxPool", X4),
    case("GlobalLpPool", X4, p=3),
    # Resize and Upsample
    case(
        "Resize",
        X4,
        C(np.zeros(0, np.float32)),
        C(f32(1, 1, 2, 2)),
        opset=11,
        coordinate_transformation_mode="asymmetric",
        mode="nearest",
        nearest_mode="floor",
        name="nearest-asymmetric-floor",
    ),
    case(
        "Resize",
        X4,
        None,
        None,
        S((2, 3, 14, 20)),
        opset=13,
        mode="linear",
        coordinate_transformation_mode="align_corners",
        name="linear-align-corners-sizes",
    ),
    case("Resize", X4, None, C(f32(1, 1, 2, 2)), mode="linear", name="linear-half-pixel"),
    case("Resize", X4, None, C(f32(1, 1, 0.5, 0.6)), mode="linear", name="linear-down"),
    case(
        "Resize",
        X4,
        None,
        C(f32(1, 1, 1.5, 1.7)),
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
        name="linear-pytorch-half-pixel",
    ),
    case("Resize", X4, None, C(f32(1, 1, 1.5, 2.5)), mode="nearest", name="nearest-half-pixel"),
    case(
        "Resize",
        X4,
        None,
        C(f32(1, 1, 1.5, 2.5)),
        mode="nearest",
        nearest_mode="round_prefer_ceil",
        name="nearest-prefer-ceil",
    ),
    case(
        "Resize",
        X4,
        None,
        None,
        C(i64(2, 3, 5, 4)),
        mode="nearest",
        nearest_mode="ceil",
        name="nearest-ceil-down",
    ),
    case("Resize", X4, None, C(f32(1, 1, 1.6, 2)), mode="cubic", name="cubic"),
    case(
        "Resize",
        X4,
        None,
        C(f32(1, 1, 0.7, 1.4)),
        mode="cubic",
        cubic_coeff_a=-0.5,
        exclude_outside=1,
        coordinate_transformation_mode="asymmetric",
        name="cubic-exclude",
    ),
    case(
        "Resize",
        X4,
        C(f32(0, 0, 0.2, 0.1, 1, 1, 0.9, 1.3)),
        None,
        C(i64(2, 3, 6, 8)),
        mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=-3.0,
        name="tf-crop-and-resize",
    ),
    case(
        "Resize",
        X4,
        None,
        None,
        C(i64(10, 10)),
        opset=18,
        axes=[2, 3],
        mode="linear",
        keep_aspect_ratio_policy="not_larger",
        name="axes-not-larger",
    ),
    case(
        "Resize",
        X4,
        None,
        C(f32(1, 1, 1.5, 0.8)),
        opset=19,
        mode="linear",
        coordinate_transformation_mode="half_pixel_symmetric",
        name="half-pixel-symmetric",
    ),
    case("Resize", X4, C(f32(1, 1, 2, 3)), opset=10, name="opset10-nearest-up"),
    case("Resize", X4, C(f32(1, 1, 0.5, 0.4)), opset=10, name="opset10-nearest-down"),
    case("Resize", X4, C(f32(1, 1, 2, 1.5)), opset=10, mode="linear", name="opset10-linear"),
    case("Upsample", X4, C(f32(1, 1, 2, 2)), opset=9, name="scales-input"),
    case("Upsample", X4, opset=7, mode="linear", scales=[1.0, 1.0, 2.0, 3.0], name="attr"),
    # Pad
    case("Pad", X4, C(i64(0, 0, 1, 2, 0, 0, 2, 1)), C(f32(1.5)[0]), name="constant"),
    case("Pad", X4, C(i64(0, 0, 1, 2, 0, 0, 2, 1)), mode="edge", name="edge"),
    case("Pad", X4, C(i64(0, 1, 2, 3, 0, 1, 3, 2)), mode="reflect", name="reflect"),
    case("Pad", X4, C(i64(0, 0, -1, 2, 0, 0, 2, -3)), name="crop"),
    case("Pad", X4, i64(0, 0, 1, 1, 0, 0, 1, 1), name="computed"),
    case("Pad", X4, opset=2, pads=[0, 0, 1, 1, 0, 0, 2, 0], value=-1.0, name="opset2"),
    case("Pad", X4, C(i64(1, 2, 3, 1)), None, C(i64(2, -1)), opset=18, name="axes"),
    case("Pad", X4, C(i64(0, 0, 2, 3, 0, 0, 4, 1)), opset=19, mode="wrap", name="wrap"),
    # Joins
    case("Add", X4, C(r(3, 1, 1))),
    case("Sub", r(3, 1, 5), r(4, 5)),
    case("Mul", X4, r(9)),
    case("Div", X4, pos(2, 1, 7, 1), name="float"),
    case("Div", i64(-7, 7, -6, 5), i64(2, -2, 4, 3), name="int"),
    case("Pow", pos(3, 4), r(3, 4), name="float"),
    case("Pow", r(3, 4), C(f32(2)[0]), name="square"),
    case("Sum", r(3, 4), r(4), r(1, 4)),
    case("Max", r(3, 4), r(4), r(3, 1)),
    case("Min", r(3, 4), r(4)),
    case("Mean", r(3, 4), r(4), r(3, 4)),
    case("PRelu", X4, C(r(3, 1, 1))),
    case("Where", RNG.random((3, 4)) > 0.5, r(3, 4), r(4)),
    # Concat, Split, Slice, Gather
    case("Concat", r(2, 3, 4), r(2, 1, 4), r(2, 2, 4), axis=1),
    case("Concat", i64(1, 2), i64(3), axis=-1, name="ints"),
    case("Split", r(2, 6, 3), axis=1, outputs=3, opset=11, split=[1, 2, 3], name="attr"),
    case("Split", r(2, 6, 3), C(i64(4, 2)), axis=1, outputs=2, opset=13, name="input"),
    case("Split", r(2, 6, 3), axis=-2, outputs=3, opset=13, name="equal"),
    case("Split", r(2, 7, 3), axis=1, outputs=3, opset=18, num_outputs=3, name="uneven"),
    case("Slice", X4, opset=9, starts=[1, -4], ends=[3, 100], axes=[1, 3], name="attrs"),
    case("Slice", X4, C(i64(0, 1)), C(i64(I64_MAX, 8)), C(i64(2, 3)), C(i64(2, 3)), name="steps"),
    case(
        "Slice", X4, C(i64(-1, 6)), C(i64(-I64_MAX, 0)), C(i64(1, -1)), C(i64(-1, -2)), name="neg"
    ),
    case("Slice", X4, i64(1), i64(3), C(i64(1)), name="computed"),
    case("Slice", X4, C(i64(5)), C(i64(2)), C(i64(2)), name="empty"),
    case("Gather", X4, C(np.array(1, np.int64)), axis=1, name="scalar"),
    case("Gather", X4, C(i64(2, 0, -1)), axis=3, name="vector"),
    case("Gather", X4, np.array([[1, 0], [-1, 2]], np.int64), axis=2, name="matrix"),
    # Shape computations
    case("Shape", X4),
    case("Shape", X4, opset=15, start=1, end=-1, name="start-end"),
    case("Size", X4),
    case("ConstantOfShape", i64(2, 3), name="default"),
    case("ConstantOfShape", i64(4), value=numpy_helper.from_array(i64(7)), name="int"),
    case("Range", np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64), name="int"),
    case("Range", f32(0.5)[0], f32(2.2)[0], f32(0.4)[0], name="float"),
    case("NonZero", np.array([[0, 1.5, 0], [2, 0, 3]], np.float32)),
    *[case(op, r(3, 4), r(4)) for op in ["Less", "Greater", "LessOrEqual", "GreaterOrEqual"]],
    case("Equal", i64(1, 2, 3), i64(1, 0, 3)),
    case("Not", RNG.random((3, 4)) > 0.5),
    *[case(op, RNG.random((3, 4)) > 0.5, RNG.random((4,)) > 0.5) for op in ["And", "Or"]],
    # Reshape family
    case("Reshape", X4, C(i64(0, -1, 9)), name="zero-infer"),
    case("Reshape", X4, S((6, 63)), name="computed"),
    *[case("Flatten", X4, axis=a, name=f"axis{a}") for a in (0, 1, 2, -1)],
    case("Squeeze", r(2, 1, 3, 1), opset=11, axes=[1, -1], name="attr"),
    case("Squeeze", r(2, 1, 3, 1), C(i64(3)), opset=13, name="input"),
    case("Squeeze", r(2, 1, 3, 1), opset=13, name="all"),
    case("Unsqueeze", r(2, 3), opset=11, axes=[0, 3], name="attr"),
    case("Unsqueeze", r(2, 3), C(i64(-1, 1)), opset=13, name="input"),
    case("Transpose", X4, perm=[0, 2, 3, 1], name="perm"),
    case("Transpose", X4, name="default"),
    case("Expand", r(3, 1), C(i64(2, 1, 4)), name="constant"),
    case("Expand", r(1, 3, 1), S((2, 1, 5)), name="computed"),
    case("Tile", r(2, 3), C(i64(2, 3)), name="constant"),
    case("Tile", r(2, 3), i64(1, 2), name="computed"),
    # Reductions
    *[
        case(op, X4, opset=13, axes=[1, -1], keepdims=keep, name=f"attr-keep{keep}")
        for op in [
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        ]
        for keep in (0, 1)
    ],
    case("ReduceMean", X4, C(i64(2, 3)), opset=18, name="input"),
    case("ReduceMean", X4, opset=18, keepdims=0, name="all"),
    case("ReduceMax", X4, C(np.zeros(0, np.int64)), opset=18, noop_with_empty_axes=1, name="noop"),
    case("ReduceSum", X4, C(i64(0, 2)), opset=13, keepdims=0, name="input"),
    case("ReduceSum", X4, i64(1), opset=13, name="computed"),
    case("ReduceSum", X4, opset=11, axes=[3], name="attr"),
    case("ArgMax", TIES, axis=1, name="first"),
    case("ArgMax", TIES, axis=1, keepdims=0, select_last_index=1, name="last"),
    case("ArgMin", TIES, axis=0, name="first"),
    case("ArgMin", TIES, axis=1, select_last_index=1, name="last"),
]


def _model(
    op: str, inputs: tuple, opset: int, outputs: int, attrs: dict
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The single-node model (plus Shape nodes for ``S`` inputs) and its feeds."""
    names, graph_inputs, initializers, nodes, feeds = [], [], [], [], {}
    for index, value in enumerate(inputs):
        name = "" if value is None else f"in{index}"
        names.append(name)
        if isinstance(value, C):
            initializers.append(numpy_helper.from_array(np.asarray(value.value), name))
        elif isinstance(value, S):
            feeds[f"{name}_of"] = np.zeros(value.shape, np.float32)
            nodes.append(helper.make_node("Shape", [f"{name}_of"], [name]))
        elif value is not None:
            feeds[name] = np.asarray(value)
    for name, value in feeds.items():
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        graph_inputs.append(helper.make_tensor_value_info(name, elem, value.shape))
    out_names = [f"out{k}" for k in range(outputs)]
    nodes.append(helper.make_node(op, names, out_names, **attrs))
    out_info = [
        helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in out_names
    ]
    graph = helper.make_graph(nodes, op, graph_inputs, out_info, initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return onnx.shape_inference.infer_shapes(proto), feeds


@pytest.mark.parametrize(("op", "inputs", "opset", "outputs", "attrs"), CASES)
def test_op_matches_onnxruntime(op: str, inputs: tuple, opset: int, outputs: int, attrs: dict):
    proto, feeds = _model(op, inputs, opset, outputs, attrs)
    want = list(run_model(proto, feeds).values())
    module = OnnxModule.from_onnx(proto).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(np.array(v)) for v in feeds.values()])
    got = [t.numpy() for t in (got if isinstance(got, tuple) else (got,))]
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape and g.dtype == w.dtype, (
            f"out{k}: {g.shape} {g.dtype}, {w.shape} {w.dtype}"
        )
        if not np.issubdtype(w.dtype, np.floating):
            assert np.array_equal(g, w), f"out{k}: {g} != onnxruntime {w}"
            continue
        scale = max(float(np.abs(w).max()), 1.0) if w.size else 1.0
        error = np.abs(g.astype(np.float64) - w) if w.size else np.zeros(1)
        where = np.unravel_index(int(error.argmax()), error.shape)
        assert error.max() <= 1e-5 * scale, (
            f"out{k}: max error {error.max():.3g} at {where}: "
            f"got {g[where]}, onnxruntime {w[where]}"
        )


def test_every_registered_op_has_a_case():
    covered = {param.values[0] for param in CASES}
    missing = sorted({op for _, op in REGISTRY} - covered)
    assert not missing, f"ops without a torch test case: {missing}"


@pytest.mark.parametrize(
    ("shape", "analysed_in", "analysed_out", "expected"),
    [
        ((4, 10, 10, 10), (1, 10, 10, 10), (1, 100, 10), [4, 100, 10]),  # [1, -1, 10]
        ((4, 48, 44, 44), (1, 48, 44, 44), (24, 2, 1936), [96, 2, 1936]),  # shuffle merge
        ((2, 96, 1936), (2, 24, 1936), (2, 1, 24, 44, 44), [2, 4, 24, 44, 44]),  # ... split
        ((1, 85, 40, 40), (1, 85, 52, 52), (1, 85, 2704), None),  # two axes differ
        ((1, 85, 40, 52), (1, 85, 52, 52), (1, 85, 2704), None),  # not a multiple
    ],
)
def test_batch_scaled_reshape_targets(shape, analysed_in, analysed_out, expected):
    assert batch_scaled(shape, analysed_in, analysed_out) == expected
