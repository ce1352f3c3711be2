"""The MorphNet penalty against hand computations, finite differences and the cost model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import model_from_proto
from morphcli.learn.penalty import MorphNetPenalty
from morphcli.resources.cost import build_cost_model
from tests.conftest import SAMPLE_MODELS


def _hand_model(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x[3] -> conv1+BN1+relu (A) -> conv2(1x1)+BN2, residual Add (A) -> depthwise conv (A)
    and conv4(1x1, bias, no BN: group B) -> Concat -> GlobalAveragePool -> Flatten -> Gemm."""
    g1 = np.array([0.9, -0.5, 0.004, 1.3], np.float32)  # channel 2 dead in BN1 ...
    g2 = np.array([0.2, 0.7, 0.006, -0.1], np.float32)  # ... and in BN2: dead in group A
    w4 = rng.standard_normal((5, 4, 1, 1)).astype(np.float32)
    w4[3] *= 1e-3  # a dead filter in group B (under 1e-2 of the largest norm) ...
    b4 = rng.standard_normal(5).astype(np.float32)
    b4[3] *= 1e-3  # ... with its bias (both count in p)
    weights = {
        "W1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "g1": g1,
        "b1": rng.standard_normal(4).astype(np.float32),
        "m1": np.zeros(4, np.float32),
        "v1": np.ones(4, np.float32),
        "W2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
        "g2": g2,
        "b2": rng.standard_normal(4).astype(np.float32),
        "m2": np.zeros(4, np.float32),
        "v2": np.ones(4, np.float32),
        "W3": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "W4": w4,
        "B4": b4,
        "W5": rng.standard_normal((10, 9)).astype(np.float32),
        "b5": rng.standard_normal(10).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["t1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["t1", "g1", "b1", "m1", "v1"], ["u1"], name="bn1"),
        helper.make_node("Relu", ["u1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["t2"], name="conv2"),
        helper.make_node("BatchNormalization", ["t2", "g2", "b2", "m2", "v2"], ["u2"], name="bn2"),
        helper.make_node("Add", ["r1", "u2"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "W3"], ["d"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["s", "W4", "B4"], ["e"], name="conv4"),
        helper.make_node("Concat", ["d", "e"], ["c"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "W5", "b5"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return proto, weights


@pytest.fixture
def hand():
    proto, weights = _hand_model(np.random.default_rng(0))
    model = model_from_proto(proto, "hand.onnx")
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    params = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in weights.items()
    }
    return cg, cm, params, weights


def _group_of(cg, tensor: str) -> int:
    (gid,) = cg.tensor_groups(tensor)
    return gid


def _close(got: float, want: float, what: str) -> None:
    assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), f"{what}: {got} != {want}"


def test_flops_penalty_equals_hand_computation(hand):
    cg, cm, params, w = hand
    penalty = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", "auto")
    # Group A's members are BN1 and BN2 (the residual Add): p is the L2 norm over both;
    # each group's p counts relative to its mean (its scale).
    p_a = np.hypot(w["g1"].astype(np.float64), w["g2"].astype(np.float64))
    w4, b4 = w["W4"].astype(np.float64), w["B4"].astype(np.float64)
    norms_b = np.sqrt((w4**2).reshape(5, -1).sum(1) + b4**2)  # conv4's filter and bias
    s_a, s_b = p_a.sum() / p_a.mean(), norms_b.sum() / norms_b.mean()
    a_a, a_b = 3, 4  # one dead channel in each group
    hw = 36
    want = (
        2 * hw * 9 * (3 * s_a)  # conv1: x (pinned, 3 channels, p = 0) -> A
        + 2 * hw * 1 * (a_a * s_a + a_a * s_a)  # conv2: A -> A
        + 2 * hw * 9 * (s_a + s_a)  # depthwise: C * (sum p_in + sum p_out)
        + 2 * hw * 1 * (a_a * s_b + a_b * s_a)  # conv4: A -> B
        + 2 * 1 * (10 * (s_a + s_b))  # Gemm: [A, B] -> 10 pinned outputs
    )
    _close(penalty().item(), want, "flops penalty")
    widths = penalty.alive_widths()
    assert widths[_group_of(cg, "t1")] == a_a and widths[_group_of(cg, "e")] == a_b, widths
    want_cost = 2 * hw * (9 * 3 * a_a + a_a * a_a + 9 * a_a + a_a * a_b) + 2 * 10 * (a_a + a_b)
    _close(penalty.cost(), want_cost, "alive flops")


def test_params_penalty_equals_hand_computation(hand):
    cg, cm, params, w = hand
    penalty = MorphNetPenalty.over(cg, cm, params.__getitem__, "params", "auto")
    p_a = np.hypot(w["g1"].astype(np.float64), w["g2"].astype(np.float64))
    w4, b4 = w["W4"].astype(np.float64), w["B4"].astype(np.float64)
    p_b = np.sqrt((w4**2).reshape(5, -1).sum(1) + b4**2)
    s_a, s_b = p_a.sum() / p_a.mean(), p_b.sum() / p_b.mean()
    a_a, a_b = 3, 4
    want = (
        9 * (3 * s_a)  # W1 [A, 3, 3, 3]
        + 4 * s_a  # g1 b1 m1 v1
        + 1 * (2 * a_a * s_a)  # W2 [A, A, 1, 1]
        + 4 * s_a  # g2 b2 m2 v2
        + 9 * s_a  # W3 [A, 1, 3, 3]
        + (a_a * s_b + a_b * s_a)  # W4 [B, A, 1, 1]
        + s_b  # B4
        + 10 * (s_a + s_b)  # W5 [10, A + B]; b5 is pinned
    )
    _close(penalty().item(), want, "params penalty")


def test_group_lasso_mode_reads_filter_norms(hand):
    cg, cm, params, w = hand
    penalty = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", "group_lasso")
    f64 = {k: v.astype(np.float64) for k, v in w.items()}
    # Group A's members: conv1, conv2 and the depthwise filters (a channel's p is the L2 norm
    # over all their entries); group B's channel counts conv4's filter and bias.
    p_a = np.sqrt(sum((f64[k] ** 2).reshape(4, -1).sum(1) for k in ("W1", "W2", "W3")))
    p_b = np.sqrt((f64["W4"] ** 2).reshape(5, -1).sum(1) + f64["B4"] ** 2)
    (got_a, got_b) = (penalty.vectors()[_group_of(cg, t)] for t in ("t1", "e"))
    np.testing.assert_allclose(got_a.detach().numpy(), p_a, rtol=1e-12)
    np.testing.assert_allclose(got_b.detach().numpy(), p_b, rtol=1e-12)
    assert penalty.alive_widths()[_group_of(cg, "t1")] == 4  # no filter norm is small


def test_gradient_matches_finite_differences(hand):
    cg, cm, params, _ = hand
    names = ("g1", "g2", "W1", "W4")
    leaves = [params[n] for n in names]
    for resource, mode in (("flops", "auto"), ("params", "group_lasso")):
        lookup = dict(params)
        # The scales are fixed when the penalty is built; the parameters then vary.
        penalty = MorphNetPenalty.over(cg, cm, lookup.__getitem__, resource, mode)

        def value(*tensors, penalty=penalty, lookup=lookup):
            lookup.update(zip(names, tensors, strict=True))
            return penalty()

        assert torch.autograd.gradcheck(value, leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet.onnx", "mobilenetv2.onnx", "inception.onnx"])
def test_cost_at_full_width_equals_analyzed_flops(name):
    from morphcli.graph.model import load_model

    model = load_model(SAMPLE_MODELS / name)
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    tensors = {
        t.name: torch.tensor(np.asarray(t.values))
        for t in model.graph.tensors().values()
        if isinstance(t, gs.Constant)
    }
    penalty = MorphNetPenalty.over(cg, cm, tensors.__getitem__, "flops")
    assert penalty.sourced.any()
    _close(penalty.cost(), cm.flops(), f"{name} alive flops at full width")


@pytest.mark.parametrize("mode", ["gamma", "group_lasso"])
def test_shrink_is_group_soft_thresholding(hand, mode):
    cg, cm, params, _ = hand
    penalty = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", mode)
    before = [None if p is None else p.detach().clone() for p in penalty.vectors()]
    originals = {k: v.detach().clone() for k, v in params.items()}
    weights = penalty.weights(penalty.alive_widths()).copy()
    # A step that kills some channels (those under the median p / W of some group).
    ratios = [
        float(np.median(p.numpy())) / weights[g] for g, p in enumerate(before) if p is not None
    ]
    step = min(ratios)
    penalty.shrink(step)
    for gid, (old, new) in enumerate(zip(before, penalty.vectors(), strict=True)):
        if old is None:
            continue
        want = (old - step * weights[gid]).clamp_min(0.0)
        np.testing.assert_allclose(new.detach().numpy(), want.numpy(), rtol=1e-9, atol=1e-12)
    for name, value in params.items():
        original = originals[name]
        # Entries only shrink toward zero along their own direction (never flip sign).
        assert torch.all(value.detach() * original >= 0), name
        assert torch.all(value.detach().abs() <= original.abs() + 1e-12), name
    dead = sum(int((p == 0).sum()) for p in penalty.vectors() if p is not None)
    assert dead >= 1


def test_group_lasso_shrinks_a_filter_and_its_bias_together(hand):
    """The proximal step scales a channel's whole pre-activation: its filter and its bias by
    the same factor, so a killed channel outputs exactly 0, not its bias."""
    cg, cm, params, weights = hand
    penalty = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", "group_lasso")
    gid = _group_of(cg, "e")
    p = penalty.vectors()[gid].detach().numpy()
    step = float(np.median(p)) / penalty.weights(penalty.alive_widths())[gid]
    penalty.shrink(step)
    factor = np.maximum(0.0, 1.0 - np.median(p) / p)
    np.testing.assert_allclose(params["B4"].detach().numpy(), weights["B4"] * factor, atol=1e-12)
    np.testing.assert_allclose(
        params["W4"].detach().numpy(), weights["W4"] * factor[:, None, None, None], atol=1e-12
    )
    assert (factor == 0).sum() >= 2  # channels killed with their bias


@pytest.mark.parametrize("mode", ["gamma", "group_lasso"])
def test_shrink_never_empties_a_group(hand, mode):
    """A step that would zero every channel leaves each group its strongest one, unchanged,
    so the graph stays connected and gradients still reach the first layers."""
    cg, cm, params, _ = hand
    penalty = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", mode)
    before = [None if p is None else p.detach().clone() for p in penalty.vectors()]
    penalty.shrink(1e12)
    for old, new in zip(before, penalty.vectors(), strict=True):
        if old is None:
            continue
        strongest = int(torch.argmax(old))
        assert int((new > 0).sum()) == 1
        assert float(new[strongest]) == pytest.approx(float(old[strongest]), rel=1e-12)


@pytest.mark.parametrize("mode", ["gamma", "group_lasso"])
def test_channels_left_out_are_neither_penalised_nor_shrunk(hand, mode):
    """With ``least``, a group's strongest ``least`` channels drop out of the penalty's sum
    and the proximal step leaves them exactly as they were, however strong the step."""
    cg, cm, params, _ = hand
    free = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", mode)
    a, b = _group_of(cg, "t1"), _group_of(cg, "e")
    least = np.zeros(len(cg.groups), dtype=np.int64)
    least[a], least[b] = 2, 3
    held = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", mode, least=least)
    before = [None if p is None else p.detach().clone() for p in free.vectors()]
    weights = free.weights(free.alive_widths())
    left_out = sum(
        weights[gid] * float(torch.topk(before[gid], int(least[gid])).values.sum())
        for gid in (a, b)
        if before[gid] is not None  # gamma mode: conv4 has no BN, so group B no source
    )
    _close(held().item(), free().item() - left_out, "penalty without the strongest")
    held.shrink(1e12)
    for gid, (old, new) in enumerate(zip(before, held.vectors(), strict=True)):
        if old is None:
            continue
        keep = max(int(least[gid]), 1)
        strongest = torch.topk(old, keep).indices
        assert int((new > 0).sum()) == keep, gid
        torch.testing.assert_close(new[strongest], old[strongest], rtol=1e-12, atol=0.0)


def test_revive_gives_dead_channels_their_start_entries_back(hand):
    """Channels outside ``keep`` get their sources' entries from ``start`` (BN1's and BN2's
    scales for the residual group, conv4's filter and bias for group B); everything else,
    the shifts (BN betas) among it, stays as trained."""
    cg, cm, params, weights = hand
    penalty = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", "auto")
    keep = penalty.alive_masks()
    a, b = _group_of(cg, "t1"), _group_of(cg, "e")
    assert np.flatnonzero(~keep[a]).tolist() == [2] and np.flatnonzero(~keep[b]).tolist() == [3]
    want = {k: v.astype(np.float64) for k, v in weights.items()}
    start = {k: torch.tensor(v + 10.0) for k, v in want.items()}
    penalty.revive(keep, start.__getitem__)
    for name in ("g1", "g2"):
        want[name][2] += 10.0
    want["W4"][3] += 10.0
    want["B4"][3] += 10.0
    for name, value in params.items():
        np.testing.assert_array_equal(value.detach().numpy(), want[name], err_msg=name)
    assert penalty.alive_masks()[a].all() and penalty.alive_masks()[b].all()
