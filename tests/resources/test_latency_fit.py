"""The latency fit on synthetic per-unit timings with known kernel steps: it recovers the
steps, the times at widths it never saw, the gradient, and the latency-weighted penalty.
No timing is measured here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import load_model
from morphcli.learn.penalty import MorphNetPenalty
from morphcli.resources.cost import build_cost_model
from morphcli.resources.latency import LatencyModel, Unit, UnitFeatures, fit_latency
from morphcli.resources.latency_fit import nnls
from morphcli.surgery.latency import width_configs
from tests.conftest import SAMPLE_MODELS

# The synthetic runtime: a unit with FLOPs costs 0.002 ms plus 3e-9 ms per FLOP counted with
# channels padded to 16 when its channel counts are multiples of 8, else 5e-9 ms per exact
# FLOP (another kernel); a unit without FLOPs costs 0.001 ms plus 1e-7 ms per element,
# padded to 4.
CONV = {"step": 16, "align": 8, "const": 0.002, "padded": 3e-9, "misaligned": 5e-9}
OTHER = {"step": 4, "const": 0.001, "per_element": 1e-7}


@pytest.fixture(scope="module")
def resnet():
    model = load_model(SAMPLE_MODELS / "resnet.onnx")
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    units = [(node.name,) for node in model.graph.nodes]
    features = UnitFeatures(model, cg, cm.flop_table, units)
    full = features.work(cg.widths().astype(float))
    has_flops = full[:, 0] > 0
    return model, cg, cm, units, features, has_flops


def synthetic_times(features: UnitFeatures, has_flops: np.ndarray, alive: np.ndarray):
    """Every unit's time under the synthetic runtime."""
    exact = features.work(alive, 1)
    off = features.misaligned(alive, CONV["align"])[0]
    blocked = CONV["padded"] * features.work(alive, CONV["step"])[:, 0]
    conv = CONV["const"] + np.where(off, CONV["misaligned"] * exact[:, 0], blocked)
    other = OTHER["const"] + OTHER["per_element"] * features.work(alive, OTHER["step"])[:, 1]
    return np.where(has_flops, conv, other)


def synthetic_gradient(features: UnitFeatures, has_flops: np.ndarray, alive: np.ndarray):
    """d sum(times) / d alive of the synthetic runtime, each staircase by its envelope."""
    own = features.misaligned(alive, CONV["align"])[0]
    padded = np.where(has_flops & ~own, CONV["padded"], 0.0)
    per_element = np.where(has_flops, 0.0, OTHER["per_element"])
    zeros = np.zeros(len(has_flops))
    return (
        features.gradient(alive, np.stack([padded, zeros], 1), CONV["step"])
        + features.gradient(alive, np.stack([zeros, per_element], 1), OTHER["step"])
        + features.gradient(alive, np.stack([CONV["misaligned"] * own * has_flops, zeros], 1), 1)
    )


@pytest.fixture(scope="module")
def fitted(resnet) -> tuple[LatencyModel, list]:
    """The latency model fitted to the synthetic runtime's times at 25 configurations."""
    _, cg, _, units, features, has_flops = resnet
    configs = [cg.widths().astype(float)] + [c.astype(float) for c in width_configs(cg, 24, seed=5)]
    unit_ms = np.stack([synthetic_times(features, has_flops, c) for c in configs])
    fits, scale = fit_latency(features, configs, unit_ms, unit_ms.sum(axis=1))
    latency = LatencyModel(
        {"provider": "synthetic", "threads": 1, "batch": 1},
        [
            Unit(nodes, fit, float(unit_ms[0, u]))
            for u, (nodes, fit) in enumerate(zip(units, fits, strict=True))
        ],
        scale,
        float(unit_ms[0].sum()),
    )
    return latency, fits


def test_nnls_matches_the_best_non_negative_subset():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.standard_normal((12, 4))
        b = rng.standard_normal(12)
        x = nnls(a, b)
        assert np.all(x >= 0)
        best = min(
            np.linalg.norm(a[:, s] @ np.linalg.lstsq(a[:, s], b, rcond=None)[0] - b)
            for s in (np.array(bits, bool) for bits in np.ndindex(2, 2, 2, 2))
            if s.any() and np.all(np.linalg.lstsq(a[:, s], b, rcond=None)[0] >= 0)
        )
        assert np.linalg.norm(a @ x - b) <= best + 1e-9


def test_the_fit_recovers_known_kernel_steps(resnet, fitted):
    *_, has_flops = resnet
    features = resnet[4]
    _, fits = fitted
    cg = resnet[1]
    # A unit whose channels are all removable shows its steps; the stem conv reads the
    # one-channel image (never a multiple of 8), so it always runs the exact-count kernel.
    aligned = ~features.misaligned(cg.widths().astype(float), CONV["align"])[0]
    shown = [f for f, conv, on in zip(fits, has_flops, aligned, strict=True) if conv and on]
    assert len(shown) >= 5
    assert all((f.step, f.align) == (CONV["step"], CONV["align"]) for f in shown), shown
    other = [f for f, conv in zip(fits, has_flops, strict=True) if not conv and any(f.coef)]
    assert other and all(f.step == OTHER["step"] for f in other), other


def test_the_fit_predicts_widths_it_never_saw(resnet, fitted):
    model, cg, cm, _, features, has_flops = resnet
    latency, _ = fitted
    resource = latency.bind(model, cg, cm)
    worst = 0.0
    for alive in width_configs(cg, 10, seed=99):
        alive = alive.astype(float)
        want = synthetic_times(features, has_flops, alive).sum()
        worst = max(worst, abs(resource.value(alive) / want - 1))
    assert worst < 1e-6, f"largest relative error {worst:.2e}"


def test_gradient_is_the_envelope_of_the_known_steps(resnet, fitted):
    model, cg, cm, _, features, has_flops = resnet
    latency, _ = fitted
    resource = latency.bind(model, cg, cm)
    for alive in [cg.widths().astype(float), *(c.astype(float) for c in width_configs(cg, 3, 7))]:
        got = resource.gradient(alive)
        want = synthetic_gradient(features, has_flops, alive)
        err = np.abs(got - want) / np.maximum(np.abs(want), 1e-12)
        worst = int(err.argmax())
        assert err.max() < 1e-6, f"group {worst}: {got[worst]} != {want[worst]}"
        # and it is what one more channel costs over a whole kernel step (16 channels)
        g = int(np.argmax(want * cg.prunable_mask()))
        wider = alive.copy()
        wider[g] += 16
        step_cost = (resource.value(wider) - resource.value(alive)) / 16
        assert step_cost == pytest.approx(want[g], rel=0.5)


def test_latency_weighted_penalty_uses_the_recovered_gradient(resnet, fitted):
    model, cg, cm, _, features, has_flops = resnet
    latency, _ = fitted
    resource = latency.bind(model, cg, cm)
    rng = np.random.default_rng(1)
    constants = {t.name: t for t in model.graph.tensors().values() if hasattr(t, "values")}
    params = {
        name: torch.tensor(np.asarray(t.values, dtype=np.float64) * rng.uniform(0.5, 1.5))
        for name, t in constants.items()
        if np.issubdtype(np.asarray(t.values).dtype, np.floating)
    }
    penalty = MorphNetPenalty.over(cg, cm, params.__getitem__, resource, "auto")
    alive = penalty.alive_widths().astype(float)
    weights = synthetic_gradient(features, has_flops, alive)
    want = sum(
        weights[g] / penalty.scales[g] * float(p.sum())
        for g, p in enumerate(penalty.vectors())
        if p is not None
    )
    assert float(penalty()) == pytest.approx(want, rel=1e-6)
    flops = MorphNetPenalty.over(cg, cm, params.__getitem__, "flops", "auto")
    assert not np.allclose(
        penalty.weights(alive) / penalty.weights(alive).max(),
        flops.weights(alive) / flops.weights(alive).max(),
    ), "the latency weights are only the FLOPs weights rescaled"
    assert penalty.cost() == pytest.approx(resource.value(alive))
