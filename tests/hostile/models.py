"""The small, valid inputs every hostile case starts from: a tiny BN conv net (1x8x8 input,
two 16-channel convs, a Gemm head over 3 classes), its data, and ways to break them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH, CLASSES, SIZE = 16, 3, 8


def tiny_model(seed: int = 0, dtype: type = np.float32) -> onnx.ModelProto:
    """conv1 (1->16) BN ReLU, conv2 (16->16) BN ReLU, global pool, Gemm (16->3)."""
    rng = np.random.default_rng(seed)
    inits = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def bn(prefix: str) -> list[str]:
        return [
            const(f"{prefix}.scale", np.abs(rng.standard_normal(WIDTH)) + 0.5),
            const(f"{prefix}.bias", 0.1 * rng.standard_normal(WIDTH)),
            const(f"{prefix}.mean", np.zeros(WIDTH)),
            const(f"{prefix}.var", np.ones(WIDTH)),
        ]

    w1 = const("conv1.weight", 0.3 * rng.standard_normal((WIDTH, 1, 3, 3)))
    w2 = const("conv2.weight", 0.1 * rng.standard_normal((WIDTH, WIDTH, 3, 3)))
    fc = const("fc.weight", 0.3 * rng.standard_normal((CLASSES, WIDTH)))
    fcb = const("fc.bias", np.zeros(CLASSES))
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", w1], ["c1"], name="conv1", pads=pads),
        helper.make_node("BatchNormalization", ["c1", *bn("bn1")], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", w2], ["c2"], name="conv2", pads=pads),
        helper.make_node("BatchNormalization", ["c2", *bn("bn2")], ["b2"], name="bn2"),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", fc, fcb], ["y"], name="fc", transB=1),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", elem, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", elem, ["N", CLASSES])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def copy_of(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(proto.SerializeToString())


def node(proto: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.name == name)


def set_attr(proto: onnx.ModelProto, node_name: str, **attrs: object) -> onnx.ModelProto:
    target = node(proto, node_name)
    for key, value in attrs.items():
        for attribute in list(target.attribute):
            if attribute.name == key:
                target.attribute.remove(attribute)
        target.attribute.append(helper.make_attribute(key, value))
    return proto


def initializer(proto: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in proto.graph.initializer if t.name == name)


def replace_initializer(proto: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    initializer(proto, name).CopyFrom(numpy_helper.from_array(value, name))
    return proto


def with_external_data(proto: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """Save with conv2's weight in ``weights.bin`` beside the model; returns the model path."""
    proto = copy_of(proto)
    tensor = initializer(proto, "conv2.weight")
    data = numpy_helper.to_array(tensor).tobytes()
    (folder / "weights.bin").write_bytes(data)
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(len(data)))):
        tensor.external_data.add(key=key, value=value)
    path = folder / name
    path.write_bytes(proto.SerializeToString())
    return path


def set_external(proto_path: Path, **fields: str) -> None:
    """Rewrite conv2.weight's external data fields (location, offset, length) in place."""
    proto = onnx.load(str(proto_path), load_external_data=False)
    tensor = initializer(proto, "conv2.weight")
    current = {e.key: e.value for e in tensor.external_data}
    current.update(fields)
    del tensor.external_data[:]
    for key, value in current.items():
        tensor.external_data.add(key=key, value=value)
    proto_path.write_bytes(proto.SerializeToString())


def tiny_data(seed: int = 0, n: int = 48) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, 1, SIZE, SIZE)).astype(np.float32),
        "y": rng.integers(0, CLASSES, n).astype(np.int64),
    }


def npz_with_lying_header(path: Path, shape: tuple[int, ...], compress: bool = False) -> None:
    """An .npz whose x.npy header declares ``shape`` float32 but stores 64 bytes."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    body = text + b" " * pad + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + bytes(64)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("x.npy", npy)


def bomb_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels (its data is a stub)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(png)
