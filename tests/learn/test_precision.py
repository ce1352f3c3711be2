"""Mixed precision: which combinations are refused, bf16 autocast on CPU with fp32 outputs and
parameters, the fp16 loss scaler's skipped and taken steps; the compiled training module."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from morphcli.errors import MorphError
from morphcli.learn.execution import Execution
from morphcli.learn.npz import ArrayDataset
from morphcli.learn.objective import Objective
from morphcli.learn.precision import Autocast, Precision
from morphcli.learn.progress import Progress
from morphcli.learn.train import Schedule, fit
from morphcli.learn.wrapper import OnnxModule
from tests.conftest import SAMPLE_MODELS

TRAINED = SAMPLE_MODELS / "resnet_fashion_trained.onnx"


def test_fp16_on_a_cpu_is_refused_and_bf16_is_not():
    with pytest.raises(MorphError, match="--precision fp16 needs CUDA"):
        Precision.for_device("fp16", "cpu")
    assert Precision.for_device("bf16", "cpu").mixed
    assert not Precision.for_device("fp32", "cpu").mixed


def test_bf16_autocast_on_cpu_returns_fp32_close_to_fp32():
    module = OnnxModule.from_onnx(TRAINED).train().requires_grad_(False)
    x = torch.from_numpy(np.load(SAMPLE_MODELS / "fashion_mnist_subset.npz")["x"][:16])
    reference = module(x)
    mixed = Autocast(module, Precision("bf16"))
    out = mixed(x)
    assert out.dtype == torch.float32
    error = float((out - reference).abs().max() / reference.abs().max())
    assert 0 < error < 0.05, f"bf16 relative error {error}"  # bf16, yet close
    mixed.eval()
    assert torch.equal(mixed(x), module(x)), "evaluation must run in fp32"


def test_bf16_training_keeps_fp32_weights_and_learns():
    torch.manual_seed(0)
    arrays = np.load(SAMPLE_MODELS / "fashion_mnist_subset.npz")
    data = ArrayDataset(arrays["x"][:128], torch.from_numpy(arrays["y"][:128]))
    module = OnnxModule.from_onnx(TRAINED)
    start = copy.deepcopy(module.state_dict())
    quiet = Progress(Console(file=io.StringIO()), live=False)
    execution = Execution(precision=Precision("bf16"))
    schedule = Schedule(epochs=2, batch_size=64, lr=0.01)
    history = fit(module, data, Objective(), schedule, "cpu", quiet, "t", execution=execution)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert all(np.isfinite(h.loss) for h in history) and history[-1].images == 128
    moved = max(float((v - start[k]).abs().max()) for k, v in module.state_dict().items())
    assert moved > 1e-4


def test_the_fp16_scaler_skips_overflowing_steps_and_takes_the_others():
    # The scaler's logic is the same on every device; on a CPU the CLI refuses fp16 only
    # because it is slow there.
    precision = Precision("fp16", "cpu")
    layer = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    scale = precision.scaler.get_scale()
    precision.step(layer(torch.full((2, 4), float("inf"))).sum(), optimizer)
    assert torch.equal(layer.weight, before) and precision.scaler.get_scale() == scale / 2
    optimizer.zero_grad()
    precision.step(layer(torch.ones(2, 4)).sum(), optimizer)
    assert not torch.equal(layer.weight, before)


def test_compile_wraps_the_trained_module():
    module = OnnxModule.from_onnx(TRAINED)
    with Execution(compile=True).training(module, Objective()) as model:
        assert model is not module and model._orig_mod is module
    with Execution().training(module, Objective()) as model:
        assert model is module


def test_the_gradient_is_clipped_to_its_maximum_norm():
    from morphcli.learn.precision import MAX_GRAD_NORM

    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    loss = (weight * torch.tensor([300.0, 0.0, 0.0, 0.0])).sum()  # gradient norm 300
    Precision.for_device("fp32", "cpu").step(loss, optimizer)
    assert float(weight.detach().norm()) == pytest.approx(MAX_GRAD_NORM)
    small = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([small], lr=1.0)
    Precision.for_device("fp32", "cpu").step((small * torch.tensor([0.3, 0.4])).sum(), optimizer)
    assert float(small.detach().norm()) == pytest.approx(0.5)  # a normal gradient untouched
