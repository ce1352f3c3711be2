"""Prune: dead channels go exactly, constant ones fold into biases, targets land just under."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from morphcli.cli import main
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.channels import FILTER, PARAM, ChannelGraph
from morphcli.graph.model import Model, load_model, model_from_proto
from morphcli.outputs import save_model
from morphcli.resources.cost import build_cost_model
from morphcli.surgery.apply import apply_copies
from morphcli.surgery.importance import class_importance
from morphcli.surgery.prune import run_prune
from tests.conftest import REAL_MODELS, SAMPLE_MODELS, input_shapes_for, sample_model_paths
from tests.surgery.test_apply import assert_outputs_close, run

SAMPLES = {p.stem: p for p in sample_model_paths()}


def analysed(stem: str) -> tuple[Model, ChannelGraph]:
    model = load_model(SAMPLES[stem])
    return model, build_channel_graph(model)


def set_channels(
    model: Model,
    cg: ChannelGraph,
    group: int,
    indices: list[int],
    roles: tuple[str, ...],
    value: float = 0.0,
) -> None:
    """Set, in place, every constant entry of the given roles that follows those channels."""
    classes = cg.groups[group].classes[indices]
    constants = model.graph.tensors()
    for follow in cg.follows:
        hit = np.isin(cg.classes(follow.tensor), classes)
        if follow.role in roles and hit.any():
            const = constants[follow.const]
            values = np.moveaxis(np.array(const.values), follow.axis, 0)
            values[hit] = value
            const.values = np.moveaxis(values, 0, follow.axis)


def set_bn(model: Model, cg: ChannelGraph, group: int, indices: list[int], beta: float) -> None:
    """BN scale 0 and shift ``beta`` for those channels, in every BN of the group."""
    classes = cg.groups[group].classes[indices]
    for node in model.graph.nodes:
        if node.op != "BatchNormalization":
            continue
        hit = np.isin(cg.classes(node.outputs[0].name), classes)
        if hit.any():
            for index, value in ((1, 0.0), (2, beta)):
                values = np.array(node.inputs[index].values)
                values[hit] = value
                node.inputs[index].values = values


def saved(model: Model, path: Path) -> Path:
    save_model(model.to_proto(), path)
    return path


def outputs_of(path: Path, model: Model) -> dict[str, np.ndarray]:
    return run(onnx.load(str(path)), model)


def removed_by_group(doc: dict) -> dict[int, list[int]]:
    return {g["id"]: g["removed"] for g in doc["groups"] if g["removed"]}


# Dead and constant channels ------------------------------------------------------------
def test_zero_filters_and_biases_are_removed_exactly(tmp_path):
    model, cg = analysed("resnet_folded")
    chosen = {2: [1, 5, 9], 8: [0, 3]}  # a block's inner width and a residual stream
    for group, indices in chosen.items():
        set_channels(model, cg, group, indices, (FILTER, PARAM))
    source = saved(model, tmp_path / "dead.onnx")
    doc = run_prune(str(source), str(tmp_path / "out.onnx"))
    assert removed_by_group(doc) == chosen
    assert doc["kept"] == [] and doc["folded"] == 0
    assert_outputs_close(outputs_of(source, model), outputs_of(tmp_path / "out.onnx", model), "")
    assert doc["after"]["flops"] < doc["before"]["flops"]


def test_zero_bn_scale_and_shift_are_removed_exactly(tmp_path):
    model, cg = analysed("resnet")
    chosen = {3: [0, 15], 5: [2, 7, 30]}
    for group, indices in chosen.items():
        set_bn(model, cg, group, indices, beta=0.0)
    source = saved(model, tmp_path / "dead.onnx")
    doc = run_prune(str(source), str(tmp_path / "out.onnx"))
    assert removed_by_group(doc) == chosen
    assert_outputs_close(outputs_of(source, model), outputs_of(tmp_path / "out.onnx", model), "")


@pytest.mark.parametrize(
    ("stem", "group", "consumer"),
    [
        ("plain_cnn", 4, "Gemm"),  # conv bias -> ReLU -> GlobalAveragePool -> Flatten -> Gemm
        ("flatten_gemm", 2, "Gemm"),  # BN shift -> ReLU -> MaxPool -> Flatten blocks -> Gemm
        ("flatten_gemm", 3, "Gemm"),  # Gemm bias -> ReLU -> Gemm
        ("mobilenetv2", 4, "Conv"),  # depthwise BN shift -> ReLU6 -> 1x1 projection conv
    ],
)
def test_constant_channels_fold_into_the_consumer_bias(tmp_path, stem, group, consumer):
    model, cg = analysed(stem)
    indices = [0, 2]
    if any(n.op == "BatchNormalization" and n.outputs[0].name in cg.groups[group].tensors
           for n in model.graph.nodes):  # fmt: skip
        set_bn(model, cg, group, indices, beta=0.7)
    else:
        set_channels(model, cg, group, indices, (FILTER,))
        set_channels(model, cg, group, indices, (PARAM,), value=0.7)
    source = saved(model, tmp_path / "constant.onnx")
    doc = run_prune(str(source), str(tmp_path / "out.onnx"))
    assert removed_by_group(doc) == {group: indices}
    assert doc["folded"] == len(indices)
    want = outputs_of(source, model)
    assert_outputs_close(want, outputs_of(tmp_path / "out.onnx", model), f"{stem} folded")
    # The same removal without the fold changes the outputs: the constants mattered.
    constant = load_model(source)
    copies = [np.ones(g.width, dtype=np.int64) for g in cg.groups]
    copies[group][indices] = 0
    unfolded = run(apply_copies(constant, build_channel_graph(constant), copies), model)
    gap = max(float(np.abs(want[k] - unfolded[k]).max()) for k in want)
    assert gap > 1e-3 * max(float(np.abs(v).max()) for v in want.values())
    folded_ops = {n.op_type for n in onnx.load(str(tmp_path / "out.onnx")).graph.node}
    assert consumer in folded_ops


def test_a_constant_before_a_padded_conv_is_kept_unless_approximate(tmp_path):
    model, cg = analysed("resnet")
    set_bn(model, cg, 2, [4], beta=0.7)  # ReLU(0.7) feeds a 3x3 conv with padding 1
    source = saved(model, tmp_path / "constant.onnx")
    doc = run_prune(str(source), str(tmp_path / "out.onnx"))
    assert removed_by_group(doc) == {}
    assert [(k["group"], k["index"]) for k in doc["kept"]] == [(2, 4)]
    assert "would not exactly fold" in doc["kept"][0]["reason"]
    loose = run_prune(str(source), str(tmp_path / "loose.onnx"), allow_approximate=True)
    assert removed_by_group(loose) == {2: [4]}


def test_a_small_scale_counts_as_zero_under_the_threshold(tmp_path):
    model, cg = analysed("resnet")
    set_bn(model, cg, 4, [1, 2], beta=0.0)
    bn = next(n for n in model.graph.nodes if n.outputs[0].name in cg.groups[4].tensors
              and n.op == "BatchNormalization")  # fmt: skip
    scale = np.array(bn.inputs[1].values)
    hit = np.isin(cg.classes(bn.outputs[0].name), cg.groups[4].classes[[1, 2]])
    scale[hit] = 5e-4
    bn.inputs[1].values = scale
    source = saved(model, tmp_path / "small.onnx")
    assert removed_by_group(run_prune(str(source), str(tmp_path / "a.onnx"))) == {4: [1, 2]}
    strict = run_prune(str(source), str(tmp_path / "b.onnx"), threshold=1e-4)
    assert removed_by_group(strict) == {}


def test_a_group_keeps_one_channel(tmp_path):
    model, cg = analysed("plain_cnn")
    set_channels(model, cg, 2, list(range(32)), (FILTER, PARAM))
    source = saved(model, tmp_path / "all_dead.onnx")
    doc = run_prune(str(source), str(tmp_path / "out.onnx"))
    assert len(removed_by_group(doc)[2]) == 31
    assert any("at least one" in k["reason"] for k in doc["kept"])


def test_dead_channels_respect_round_to(tmp_path):
    model, cg = analysed("resnet_folded")
    set_channels(model, cg, 2, [1, 3, 5, 7, 9], (FILTER, PARAM))  # 16 - 5 = 11: not a 4k
    source = saved(model, tmp_path / "dead.onnx")
    doc = run_prune(str(source), str(tmp_path / "out.onnx"), round_to=4)
    assert len(removed_by_group(doc)[2]) == 4 and doc["groups"][2]["after"] == 12
    assert [k["reason"] for k in doc["kept"]] == ["--round-to 4"]
    assert_outputs_close(outputs_of(source, model), outputs_of(tmp_path / "out.onnx", model), "")


# Importance-driven pruning ---------------------------------------------------------------
@pytest.mark.parametrize("path", list(SAMPLES.values()), ids=lambda p: p.stem)
def test_target_flops_lands_just_under(tmp_path, path):
    doc = run_prune(str(path), str(tmp_path / "out.onnx"), target=("flops", "50%"))
    target = doc["target"]
    assert 0.98 <= doc["after"]["flops"] / target["value"] <= 1.0, doc["after"]
    assert target["reached"] == doc["after"]["flops"]


def test_target_params_lands_just_under(tmp_path):
    doc = run_prune(str(SAMPLES["resnet"]), str(tmp_path / "o.onnx"), target=("params", "40%"))
    assert 0.98 <= doc["after"]["params"] / doc["target"]["value"] <= 1.0


def test_the_cost_model_predicts_the_result(tmp_path):
    model, cg = analysed("inception")
    cm = build_cost_model(model, cg)
    doc = run_prune(str(SAMPLES["inception"]), str(tmp_path / "o.onnx"), ratio=0.6)
    after = np.array([g["after"] for g in doc["groups"]], dtype=float)
    assert doc["after"]["flops"] == round(cm.flops(after))
    assert doc["after"]["params"] == round(cm.params(after))


def test_ratio_keeps_the_most_important_channels(tmp_path):
    model, cg = analysed("resnet_fashion_trained")
    importance = class_importance(model, cg)
    doc = run_prune(str(SAMPLES["resnet_fashion_trained"]), str(tmp_path / "o.onnx"), ratio=0.5)
    for group, score in zip(cg.groups, importance, strict=True):
        entry = doc["groups"][group.id]
        if not group.prunable:
            assert entry["after"] == entry["before"]
            continue
        assert entry["after"] == max(1, int(np.floor(0.5 * group.width + 0.5)))
        kept = np.setdiff1d(np.arange(group.width), entry["removed"])
        assert score[kept].min() >= score[entry["removed"]].max()
    result = model_from_proto(onnx.load(str(tmp_path / "o.onnx")), "o", model.input_shapes)
    assert build_channel_graph(result).widths().tolist() == [g["after"] for g in doc["groups"]]


def test_round_to_gives_multiples_or_full_width(tmp_path):
    doc = run_prune(str(SAMPLES["mobilenetv2"]), str(tmp_path / "o.onnx"), ratio=0.3, round_to=8)
    for group in doc["groups"]:
        assert group["after"] % 8 == 0 or group["after"] == group["before"], group
    target = run_prune(
        str(SAMPLES["mobilenetv2"]), str(tmp_path / "t.onnx"), target=("flops", "50%"), round_to=8
    )
    for group in target["groups"]:
        assert group["after"] % 8 == 0 or group["after"] == group["before"], group
    assert target["after"]["flops"] <= target["target"]["value"]


# Command line ------------------------------------------------------------------------------
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_prune_json_and_input_untouched(cli, tmp_path):
    source = tmp_path / "in.onnx"
    source.write_bytes(SAMPLES["resnet"].read_bytes())
    before = digest(source)
    out = tmp_path / "out.onnx"
    result = cli.invoke(main, ["prune", str(source), "-o", str(out), "--ratio", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["after"]["flops"] < doc["before"]["flops"]
    assert digest(source) == before
    onnx.checker.check_model(str(out), full_check=True)
    human = cli.invoke(main, ["prune", str(source), "-o", str(out), "--target-flops", "60%"])
    assert human.exit_code == 0 and "Widths that changed" in human.output
    assert digest(source) == before


def test_cli_refuses_to_overwrite_the_input(cli, tmp_path):
    source = tmp_path / "in.onnx"
    source.write_bytes(SAMPLES["plain_cnn"].read_bytes())
    before = digest(source)
    result = cli.invoke(main, ["prune", str(source), "-o", str(source), "--ratio", "0.5"])
    assert result.exit_code == 2
    assert "input model" in result.output
    assert digest(source) == before
    folder = cli.invoke(main, ["prune", str(source), "-o", str(tmp_path), "--ratio", "0.5"])
    assert folder.exit_code == 2 and "directory" in folder.output


def test_cli_unreachable_target_exits_1(cli, tmp_path):
    out = tmp_path / "out.onnx"
    result = cli.invoke(main, ["prune", str(SAMPLES["resnet"]), "-o", str(out),
                               "--target-flops", "1k"])  # fmt: skip
    assert result.exit_code == 1
    assert "smallest reachable" in result.output
    assert not out.exists()


def test_cli_conflicting_modes_exit_2(cli, tmp_path):
    out = str(tmp_path / "o.onnx")
    args = ["prune", str(SAMPLES["resnet"]), "-o", out]
    assert cli.invoke(main, [*args, "--ratio", "0.5", "--target-flops", "50%"]).exit_code == 2
    assert (
        cli.invoke(main, [*args, "--target-flops", "50%", "--target-params", "1k"]).exit_code == 2
    )
    assert cli.invoke(main, [*args, "--ratio", "1.5"]).exit_code == 2
    assert cli.invoke(main, [*args, "--target-flops", "lots"]).exit_code == 2


def test_a_constant_folds_into_a_matmul_as_an_added_bias(tmp_path):
    path = REAL_MODELS / "ppocr_mobile_v2.0_cls.onnx"
    model = load_model(path, input_shapes_for(path))
    cg = build_channel_graph(model)
    matmul = next(n for n in model.graph.nodes if n.op == "MatMul")
    (group,) = cg.tensor_groups(matmul.inputs[0].name)
    set_bn(model, cg, group, [3, 50], beta=0.7)  # HardSwish(0.7) -> pools -> MatMul
    source = saved(model, tmp_path / "constant.onnx")
    doc = run_prune(str(source), str(tmp_path / "out.onnx"), input_shapes=input_shapes_for(path))
    assert removed_by_group(doc) == {group: [3, 50]} and doc["folded"] == 2
    assert_outputs_close(outputs_of(source, model), outputs_of(tmp_path / "out.onnx", model), "")
    result = onnx.load(str(tmp_path / "out.onnx"))
    after_matmul = [n for n in result.graph.node if n.input and n.input[0].endswith("_matmul")]
    assert [n.op_type for n in after_matmul] == ["Add"]


def test_target_ratio_is_the_largest_ratio_within_the_target():
    """The latency fallback's search: the largest ratio whose widths fit, checked on FLOPs
    against the ratio just above it (the bisection's resolution, 1e-4)."""
    from morphcli.graph.model import load_model
    from morphcli.resources.cost import build_cost_model
    from morphcli.resources.resource import count_resource
    from morphcli.surgery.prune import target_ratio
    from morphcli.surgery.widths import ratio_widths

    model = load_model(str(SAMPLE_MODELS / "resnet.onnx"))
    cg = build_channel_graph(model)
    flops = count_resource(build_cost_model(model, cg), "flops")
    target = 0.4 * flops.value(cg.widths())
    ratio = target_ratio(flops, cg, target)
    assert flops.value(ratio_widths(cg, ratio).astype(float)) <= target
    assert flops.value(ratio_widths(cg, min(1.0, ratio + 1.01e-4)).astype(float)) > target
    assert 0.3 < ratio < 0.9
