"""Data sources, losses and the training loop (real tiny training runs on CPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torch import nn

from morphcli.errors import MorphError
from morphcli.learn.data import ImageOptions, split_data
from morphcli.learn.objective import Objective
from morphcli.learn.progress import Progress
from morphcli.learn.train import Schedule, evaluate, fit

GRAY_28 = ImageOptions(channels=1, size=(28, 28))


def _npz(tmp_path, n=40, labels=True, val=False, shape=(1, 28, 28), classes=10):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.random((n, *shape), dtype=np.float32)}
    if labels:
        arrays["y"] = rng.integers(0, classes, n)
    if val:
        arrays["x_val"] = rng.random((8, *shape), dtype=np.float32)
        if labels:
            arrays["y_val"] = rng.integers(0, classes, 8)
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_with_validation_arrays(tmp_path):
    split = split_data(str(_npz(tmp_path, val=True)), None, (1, 28, 28), GRAY_28)
    assert (len(split.train), len(split.val), split.labelled) == (40, 8, True)


def test_npz_without_validation_holds_out_a_split(tmp_path):
    split = split_data(str(_npz(tmp_path, labels=False)), None, (1, 28, 28), GRAY_28, seed=3)
    assert (len(split.train), len(split.val), split.labelled) == (36, 4, False)
    seen = {float(split.train[i][0].sum()) for i in range(36)}
    assert not seen & {float(split.val[i][0].sum()) for i in range(4)}


def test_data_of_the_wrong_shape_is_a_clear_error(tmp_path):
    path = _npz(tmp_path, shape=(3, 32, 32))
    with pytest.raises(MorphError, match=r"shape 3x32x32, the model input takes N x 1x28x28"):
        split_data(str(path), None, (1, 28, 28), GRAY_28)


def test_image_folder_reads_class_subfolders(tmp_path):
    for label, name in enumerate(["boot", "coat"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            pixels = np.full((40, 30, 3), 100 * label + i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    options = ImageOptions(channels=1, size=(28, 28), mean=(0.5,), std=(0.25,))
    split = split_data(str(tmp_path), str(tmp_path), (1, 28, 28), options)
    x, y = split.train[4]
    assert tuple(x.shape) == (1, 28, 28) and int(y) == 1
    gray = 101 / 255.0  # Pillow's L of an RGB gray is the gray value itself
    assert torch.allclose(x, torch.full_like(x, (gray - 0.5) / 0.25), atol=1e-6), float(x[0, 0, 0])


def test_module_function_dataset(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "def build():\n"
        "    return TensorDataset(torch.zeros(20, 1, 28, 28))\n"
    )
    monkeypatch.chdir(tmp_path)
    split = split_data("my_data:build", None, (1, 28, 28), GRAY_28)
    assert (len(split.train), len(split.val), split.labelled) == (18, 2, False)


def test_labels_out_of_range_are_a_clear_error():
    logits = torch.zeros(4, 10)
    with pytest.raises(MorphError, match=r"labels out of range: found 0..12.*10 classes"):
        Objective()((logits,), torch.zeros(4, 1), torch.tensor([0, 3, 12, 1]))


def test_distillation_is_zero_for_the_teacher_itself_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(8, 4)
    objective = Objective(teacher, temperature=2.0)
    with torch.no_grad():
        assert float(objective((teacher(x),), x, None)) == pytest.approx(0.0, abs=1e-6)
        assert float(objective((teacher(x) + torch.randn(8, 3),), x, None)) > 0.01
        maps = nn.Conv2d(1, 1, 3, padding=1)
        image = torch.randn(8, 1, 6, 6)
        # Maps use MSE over the teacher's variance: predicting the mean costs about 1.
        loss = Objective(maps)((torch.zeros(8, 1, 6, 6) + maps(image).mean(),), image, None)
    assert float(loss) == pytest.approx(1.0, rel=0.05)


def test_distill_weight_mixes_cross_entropy_and_distillation():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    student = teacher(x).detach() + torch.randn(8, 3)
    with torch.no_grad():
        ce = float(Objective()((student,), x, y))
        kd = float(Objective(teacher, temperature=2.0)((student,), x, None))
        mixed = float(Objective(teacher, temperature=2.0, distill_weight=0.25)((student,), x, y))
        # A batch without labels is distilled alone, whatever the weight.
        unlabelled = float(Objective(teacher, 2.0, distill_weight=0.25)((student,), x, None))
    assert ce > 0.1 and kd > 0.1 and abs(ce - kd) > 0.1
    assert mixed == pytest.approx(0.75 * ce + 0.25 * kd, rel=1e-6)
    assert unlabelled == pytest.approx(kd, rel=1e-6)
    with pytest.raises(ValueError, match="distill_weight"):
        Objective(teacher, distill_weight=1.5)


def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.LazyLinear(10),
    )  # fmt: skip


def _run(tmp_path, seed: int) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    net = _tiny_net()
    net(torch.zeros(2, 1, 28, 28))
    split = split_data(str(_npz(tmp_path, n=64)), None, (1, 28, 28), GRAY_28)
    progress = Progress(Console(file=io.StringIO()), live=False)
    schedule = Schedule(epochs=2, batch_size=16, seed=seed)
    history = fit(net, split.train, Objective(), schedule, "cpu", progress, "fine-tune")
    return net, history


def test_training_is_reproducible_with_a_seed(tmp_path):
    a, history = _run(tmp_path, seed=1)
    b, _ = _run(tmp_path, seed=1)
    c, _ = _run(tmp_path, seed=2)
    assert len(history) == 2
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), f"{name} differs between runs with the same seed"
    differs = [
        not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    ]
    assert any(differs), "another seed gave the same weights"


def test_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    net = _tiny_net()
    net(x[:2])
    before, _ = evaluate(net, data, Objective(), 32, "cpu")
    progress = Progress(Console(file=io.StringIO()), live=False)
    fit(net, data, Objective(), Schedule(epochs=10, batch_size=16, lr=0.05), "cpu", progress, "t")
    after, accuracy = evaluate(net, data, Objective(), 32, "cpu")
    assert after < 0.8 * before, (before, after)
    assert accuracy > 0.7


def test_a_nearly_constant_output_does_not_dominate_distillation():
    # A detector's objectness on inputs with nothing in them barely varies (variance 1e-12):
    # a 1e-3 deviation there must not weigh a million times more than the other outputs.
    torch.manual_seed(0)
    varied, flat = torch.randn(8, 4, 3), torch.full((8, 4, 1), 1e-6) + 1e-6 * torch.rand(8, 4, 1)

    class Teacher(nn.Module):
        def forward(self, x):
            return varied, flat

    objective = Objective(Teacher())
    off = objective((varied + 0.1 * torch.randn(8, 4, 3), flat + 1e-3), varied, None)
    assert 0.005 < float(off) < 0.1, float(off)
    assert float(objective((varied, flat), varied, None)) == 0.0
