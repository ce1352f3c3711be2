"""Hostile and broken models: the file itself, its graph, its external data.

(Longer than most files: one line or two per case reads better than a table elsewhere.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.hostile.cases import COMMANDS, Builder, command_argv, run, standard_runs
from tests.hostile.models import (
    copy_of,
    initializer,
    node,
    replace_initializer,
    set_attr,
    set_external,
    tiny_model,
    with_external_data,
)

# Control characters and a terminal escape in a name: messages must print them escaped.
HOSTILE_NAME = "bad\n\x1b[31mred\x07"
REWRITERS = ("prune", "expand", "shrink")


def _write(content: bytes, name: str = "model.onnx") -> Callable[[Path], object]:
    return lambda folder: (folder / name).write_bytes(content)


def file_cases(b: Builder) -> None:
    good = b.model.SerializeToString()
    rng = np.random.default_rng(1)
    b.add("file", "valid", None, standard_runs(0))
    for name, content in [
        ("empty", b""),
        ("random_1k", rng.bytes(1024)),
        ("random_64k", rng.bytes(65536)),
        ("random_small", rng.bytes(7)),
        ("half", good[: len(good) // 2]),
        ("cut_7_bytes", good[:-7]),
        ("first_10_bytes", good[:10]),
        ("text", b"hello, world\n"),
        ("json", b'{"graph": {"node": []}}'),
        ("nul_bytes", bytes(4096)),
    ]:
        b.add("file", name, _write(content), standard_runs(2))
    b.add("file", "missing", lambda f: (f / "model.onnx").unlink(), standard_runs(2))
    b.add("file", "directory", lambda f: (f / "model.onnx").unlink() or (f / "model.onnx").mkdir(),
          standard_runs(2))  # fmt: skip
    b.add("file", "fifo", lambda f: (f / "model.onnx").unlink() or os.mkfifo(f / "model.onnx"),
          standard_runs(2))  # fmt: skip
    for target in ("/dev/zero", "/dev/null", "/dev/urandom"):
        link = f"link_{Path(target).name}.onnx"
        b.add("file", f"symlink_to_{Path(target).name}", lambda f, t=target, n=link:
              (f / n).symlink_to(t), standard_runs(2, model=link))  # fmt: skip

    def loop(f: Path) -> None:
        (f / "a.onnx").symlink_to("b.onnx")
        (f / "b.onnx").symlink_to("a.onnx")

    b.add("file", "symlink_loop", loop, standard_runs(2, model="a.onnx"))
    b.add("file", "through_a_file", None, standard_runs(2, model="data.npz/model.onnx"))
    b.add("file", "name_too_long", None, standard_runs(2, model="m" * 300 + ".onnx"))
    b.add("file", "data_file_as_model", None, standard_runs(2, model="data.npz"))
    b.add("file", "hostile_name_garbage", _write(b"garbage", HOSTILE_NAME),
          standard_runs(2, model=HOSTILE_NAME))  # fmt: skip

    def sparse_3g(f: Path) -> None:
        with open(f / "model.onnx", "wb") as stream:
            stream.truncate(3 * 2**30)

    b.add("file", "over_2_gib", sparse_3g, standard_runs(2))
    padded = copy_of(b.model)
    padded.doc_string = "x" * (2 * 2**20)
    b.add("file", "over_max_memory", _write(padded.SerializeToString()),
          [run([*command_argv(c), "--max-memory", "1M"], 2) for c in COMMANDS])  # fmt: skip
    empty_graph = copy_of(b.model)
    del empty_graph.graph.node[:]
    b.add("file", "no_nodes", _write(empty_graph.SerializeToString()), standard_runs(2))
    # A future opset passes onnx's checker (analyze reads it), but onnxruntime cannot run it.
    for name, edit, expect in [
        ("no_opset", lambda m: m.ClearField("opset_import"), 2),
        ("opset_99", lambda m: m.opset_import[0].__setattr__("version", 99),
         {"analyze": 0, **dict.fromkeys(REWRITERS, 2)}),
        ("ir_version_1", lambda m: m.__setattr__("ir_version", 1), 2),
    ]:  # fmt: skip
        broken = copy_of(b.model)
        edit(broken)
        b.add("file", name, _write(broken.SerializeToString()), standard_runs(expect))


def _model(proto: onnx.ModelProto) -> Callable[[Path], object]:
    return _write(proto.SerializeToString())


def _conv2_weight(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(2).standard_normal(shape).astype(np.float32) * 0.1


def graph_cases(b: Builder) -> None:
    def add(name: str, proto, expect) -> None:
        b.add("graph", name, _model(proto), standard_runs(expect))

    m = b.model
    add("conv_weight_rank", replace_initializer(copy_of(m), "conv2.weight",
        _conv2_weight((16, 16, 9))), 2)  # fmt: skip
    for group in (3, 0, -1, 32):
        add(f"conv_group_{group}", set_attr(copy_of(m), "conv2", group=group), 2)
    add("conv_in_channels", replace_initializer(copy_of(m), "conv2.weight",
        _conv2_weight((16, 8, 3, 3))), 2)  # fmt: skip
    add("conv_out_not_divisible", set_attr(replace_initializer(copy_of(m), "conv2.weight",
        _conv2_weight((15, 8, 3, 3))), "conv2", group=2), 2)  # fmt: skip
    big_kernel = replace_initializer(copy_of(m), "conv1.weight", _conv2_weight((16, 1, 11, 11)))
    add("kernel_bigger_than_input", set_attr(big_kernel, "conv1", pads=[0, 0, 0, 0]), 2)
    add("gemm_k_mismatch", replace_initializer(copy_of(m), "fc.weight",
        _conv2_weight((3, 15))), 2)  # fmt: skip
    add("bn_scale_length", replace_initializer(copy_of(m), "bn1.scale",
        np.ones(15, np.float32)), 2)  # fmt: skip
    add("flatten_axis_5", set_attr(copy_of(m), "flatten", axis=5), 2)
    named = set_attr(copy_of(m), "conv2", group=3)
    node(named, "conv2").name = HOSTILE_NAME
    add("hostile_node_name", named, 2)
    unknown = copy_of(m)
    node(unknown, "relu1").op_type = "Frobnicate"
    add("unknown_op", unknown, 2)
    custom = copy_of(m)
    node(custom, "relu2").domain = "com.example"
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    add("custom_domain_op", custom, 2)
    cycle = copy_of(m)
    node(cycle, "relu1").input[0] = "c2"
    add("cycle", cycle, 2)
    duplicate = copy_of(m)
    node(duplicate, "relu2").output[0] = "r1"
    add("duplicate_output", duplicate, 2)
    dangling = copy_of(m)
    node(dangling, "conv2").input[0] = "nowhere"
    add("dangling_input", dangling, 2)
    no_weight = copy_of(m)
    del node(no_weight, "conv1").input[1:]
    add("conv_without_weight", no_weight, 2)
    no_shape = copy_of(m)
    no_shape.graph.input[0].type.tensor_type.ClearField("shape")
    add("input_without_shape", no_shape, 2)
    dynamic = copy_of(m)
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    add("dynamic_height", dynamic, 2)
    rank3 = copy_of(m)
    del rank3.graph.input[0].type.tensor_type.shape.dim[3]
    add("input_rank_3", rank3, 2)
    sparse = copy_of(m)
    dense = initializer(sparse, "fc.bias")
    sparse.graph.sparse_initializer.append(helper.make_sparse_tensor(
        dense, helper.make_tensor("fc.bias_idx", TensorProto.INT64, [1], [0]), [3]))  # fmt: skip
    sparse.graph.initializer.remove(dense)
    add("sparse_initializer", sparse, 2)
    bf16 = copy_of(m)
    bias = initializer(bf16, "fc.bias")
    bias.CopyFrom(helper.make_tensor("fc.bias", TensorProto.BFLOAT16, [3], [0, 0, 0]))
    add("bfloat16_weight", bf16, 2)
    add("float64_model", tiny_model(dtype=np.float64), 2)
    add("float16_model", tiny_model(dtype=np.float16), {"analyze": 0, "prune": 0, "expand": 0,
        "shrink": 2})  # fmt: skip
    string_input = copy_of(m)
    string_input.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    add("string_input", string_input, 2)
    int_input = copy_of(m)
    int_input.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    add("int64_into_conv", int_input, 2)
    for name, tensor, index, value in [
        ("nan_weight", "conv1.weight", (0, 0, 0, 0), np.nan),
        ("inf_weight", "fc.weight", (1, 2), np.inf),
        ("nan_running_var", "bn2.var", (3,), np.nan),
    ]:
        broken = copy_of(m)
        values = numpy_helper.to_array(initializer(broken, tensor)).copy()
        values[index] = value
        add(name, replace_initializer(broken, tensor, values), 2)
    add("inf_clip_bound", _with_clip(copy_of(m)), 0)
    huge = copy_of(m)
    initializer(huge, "fc.bias").dims[:] = [100000, 100000]
    add("dims_claim_more_than_data", huge, 2)
    add("constant_of_shape_activation_bomb", _with_broadcast_bomb(copy_of(m)), 2)
    reshape = copy_of(m)
    reshape.graph.initializer.append(numpy_helper.from_array(np.array([1, 7]), "bad_shape"))
    node(reshape, "fc").input[0] = "fr"
    reshape.graph.node.insert(8, helper.make_node("Reshape", ["f", "bad_shape"], ["fr"], name="rs"))
    add("reshape_wrong_count", reshape, 2)
    two_in = copy_of(m)
    two_in.graph.input.append(helper.make_tensor_value_info("z", 1, ["N", 3]))
    two_in.graph.node.append(helper.make_node("Add", ["y", "z"], ["y2"], name="add_z"))
    two_in.graph.output[0].name = "y2"
    add("two_inputs", two_in, {"analyze": 0, "prune": 0, "expand": 0, "shrink": 2})
    two_out = copy_of(m)
    two_out.graph.output.append(helper.make_tensor_value_info("p", 1, ["N", 16, 1, 1]))
    add("two_outputs_with_labels", two_out, {"analyze": 0, "prune": 0, "expand": 0, "shrink": 2})


def _with_clip(proto):
    """relu2 -> Clip(0, inf): an inf that is a setting, not a weight."""
    proto.graph.initializer.extend([
        numpy_helper.from_array(np.array(0.0, np.float32), "clip.min"),
        numpy_helper.from_array(np.array(np.inf, np.float32), "clip.max"),
    ])  # fmt: skip
    node(proto, "pool").input[0] = "clipped"
    proto.graph.node.insert(6, helper.make_node("Clip", ["r2", "clip.min", "clip.max"],
                                                ["clipped"], name="clip"))  # fmt: skip
    return proto


def _with_broadcast_bomb(proto):
    """y * ConstantOfShape([65536, 65536, 3]): a 51 GB activation at batch 1."""
    proto.graph.initializer.append(
        numpy_helper.from_array(np.array([65536, 65536, 3], np.int64), "bomb_shape")
    )
    value = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    proto.graph.node.extend([
        helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"], name="bomb", value=value),
        helper.make_node("Mul", ["y", "bomb"], ["yb"], name="times_bomb"),
    ])  # fmt: skip
    proto.graph.output[0].name = "yb"
    del proto.graph.output[0].type.tensor_type.shape.dim[:]
    return proto


def external_cases(b: Builder) -> None:
    """conv2.weight stored in weights.bin; a sentinel file sits outside every case folder."""
    sentinel = b.root / "sentinel.bin"
    sentinel.write_bytes(bytes(9216))  # as many bytes as conv2.weight needs
    size = str(16 * 16 * 9 * 4)

    def add(name: str, fields: dict[str, str], expect: int = 2, extra=None) -> None:
        def setup(folder: Path) -> None:
            with_external_data(b.model, folder)
            if extra is not None:
                extra(folder)
            if fields:
                set_external(folder / "model.onnx", **fields)

        b.add("external", name, setup, standard_runs(expect))

    add("valid", {}, 0)
    add("parent_dir", {"location": "../../sentinel.bin"})
    add("absolute", {"location": str(sentinel)})
    add("climbs_back", {"location": "sub/../../../sentinel.bin"})
    add("backslashes", {"location": "..\\..\\sentinel.bin"})
    add("symlink_out", {"location": "link.bin"},
        extra=lambda f: (f / "link.bin").symlink_to(sentinel))  # fmt: skip
    add("symlink_etc_passwd", {"location": "passwd.bin"},
        extra=lambda f: (f / "passwd.bin").symlink_to("/etc/passwd"))  # fmt: skip
    add("symlink_dev_zero", {"location": "zero.bin"},
        extra=lambda f: (f / "zero.bin").symlink_to("/dev/zero"))  # fmt: skip
    add("dev_zero", {"location": "/dev/zero"})
    add("empty_location", {"location": ""})
    add("dot", {"location": "."})
    add("dot_slash", {"location": "./"})
    add("directory", {"location": "subdir"}, extra=lambda f: (f / "subdir").mkdir())
    add("fifo", {"location": "pipe.bin"}, extra=lambda f: os.mkfifo(f / "pipe.bin"))
    add("missing", {"location": "gone.bin"})
    add("hostile_name", {"location": HOSTILE_NAME})
    add("nul_in_location", {"location": "weights.bin\0x"})
    add("offset_past_end", {"offset": "9000"})
    add("length_past_end", {"length": str(10**15)})
    add("length_short", {"length": "100"})
    add("negative_offset", {"offset": "-4"})
    add("offset_not_a_number", {"offset": "twelve"})
    add("truncated_data", {"length": size}, extra=lambda f: _truncate(f / "weights.bin", 1000))

    def constant_escape(folder: Path) -> None:
        proto = copy_of(b.model)
        value = helper.make_tensor("c", TensorProto.FLOAT, [3], [0.0, 0.0, 0.0])
        value.ClearField("float_data")
        value.data_location = TensorProto.EXTERNAL
        value.external_data.add(key="location", value="../../sentinel.bin")
        proto.graph.node.append(helper.make_node("Constant", [], ["k"], value=value, name="k"))
        proto.graph.node.append(helper.make_node("Add", ["y", "k"], ["yk"], name="add_k"))
        proto.graph.output[0].name = "yk"
        (folder / "model.onnx").write_bytes(proto.SerializeToString())

    b.add("external", "constant_node_escape", constant_escape, standard_runs(2))


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as stream:
        stream.truncate(size)
