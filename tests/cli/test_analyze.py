"""`morphnet analyze` end to end: every real model, the JSON schema, budget gates, and bad
input giving exit 2 with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from morphcli.cli import main
from tests.conftest import REAL_INPUT_SHAPES, REAL_MODELS, real_model_paths


def shape_flags(path: Path) -> list[str]:
    shapes = REAL_INPUT_SHAPES.get(path.name, {})
    return [f"--input-shape={n}={'x'.join(map(str, s))}" for n, s in shapes.items()]


@pytest.mark.parametrize("path", real_model_paths(), ids=lambda p: p.name)
def test_every_real_model_analyses(cli, path):
    result = cli.invoke(main, ["analyze", str(path), "--json", *shape_flags(path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"model", "inputs", "flops", "params", "ops", "groups", "warnings"}
    assert doc["flops"] > 0 and doc["params"] > 0
    op_keys = {"name", "op_type", "output_shape", "flops", "params", "groups_in", "groups_out"}
    assert all(op_keys <= set(op) for op in doc["ops"])
    assert sum(op["flops"] for op in doc["ops"]) == pytest.approx(doc["flops"], rel=1e-6)
    ids = {g["id"] for g in doc["groups"]}
    for group in doc["groups"]:
        assert {"id", "channels", "prunable", "pinned_by", "producers"} <= set(group)
        assert group["prunable"] == (group["pinned_by"] is None)
        if group["pinned_by"]:
            assert set(group["pinned_by"]) == {"op", "reason"}
    assert all(set(op["groups_in"] + op["groups_out"]) <= ids for op in doc["ops"])


def test_human_output_fits_80_columns():
    path = REAL_MODELS / "yolox_nano.onnx"
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    proc = subprocess.run(
        [sys.executable, "-m", "morphcli", "analyze", str(path)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("removable" in line for line in lines)
    assert any(line.startswith("FLOPs 1.05G") for line in lines)


def test_budget_gate_exits_1_when_over(cli):
    path = str(REAL_MODELS / "unet_sasekazu.onnx")
    assert cli.invoke(main, ["analyze", path, "--max-flops", "3G"]).exit_code == 0
    result = cli.invoke(main, ["analyze", path, "--max-flops", "2G", "--max-params", "1M"])
    assert result.exit_code == 1
    assert "over budget" in result.stderr and "flops 2.43G > --max-flops 2G" in result.stderr


def _tiny_proto() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    graph = helper.make_graph(
        [node], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [w],
    )  # fmt: skip
    return helper.make_model(graph)


def run_bad(cli, args: list[str]) -> str:
    result = cli.invoke(main, ["analyze", *args])
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    return message


def test_missing_file(cli, tmp_path):
    message = run_bad(cli, [str(tmp_path / "nope.onnx")])
    assert "nope.onnx" in message and "no such file" in message


def test_not_onnx(cli, tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(os.urandom(4096))
    assert "junk.onnx" in run_bad(cli, [str(path)])


def test_truncated_file(cli, tmp_path):
    data = (REAL_MODELS / "yunet_n_320_320.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert "cut.onnx" in run_bad(cli, [str(path)])


def test_missing_external_data(cli, tmp_path):
    proto = onnx.load(REAL_MODELS / "unet_sasekazu.onnx")
    path = tmp_path / "ext.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    assert cli.invoke(main, ["analyze", str(path)]).exit_code == 0
    (tmp_path / "ext.data").unlink()
    message = run_bad(cli, [str(path)])
    assert "ext.data" in message and "missing" in message


def test_dynamic_dim_needs_input_shape(cli, tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(_tiny_proto(), path)
    message = run_bad(cli, [str(path)])
    assert "'x'" in message and "--input-shape" in message
    ok = cli.invoke(main, ["analyze", str(path), "--input-shape", "x=1x3x8x8", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["inputs"] == {"x": [1, 3, 8, 8]}


@pytest.mark.parametrize(
    ("flag", "needle"),
    [("x=abc", "bad shape"), ("x", "NAME=1x3x224x224"), ("y=1x3x8x8", "not an input"),
     ("x=1x3x8", "rank"), ("x=1x4x8x8", "fixes it to 3")],
)  # fmt: skip
def test_bad_input_shape(cli, tmp_path, flag, needle):
    path = tmp_path / "dyn.onnx"
    onnx.save(_tiny_proto(), path)
    assert needle in run_bad(cli, [str(path), "--input-shape", flag])


def test_bad_budget_value_is_exit_2(cli):
    run_bad(cli, [str(REAL_MODELS / "unet_sasekazu.onnx"), "--max-flops", "lots"])


def test_analyze_and_help_do_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from morphcli.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0\n"
        f"r = CliRunner().invoke(main, ['analyze', {str(REAL_MODELS / 'unet_sasekazu.onnx')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
