"""The slimming methods the quality benchmark compares, each from a trained seed model to a
fine-tuned ONNX file at a FLOPs target, with the same data, optimizer and training epochs.

- ``morphnet``: ``morphnet shrink`` (learn with the penalty, remove, expand, fine-tune);
- ``uniform``: ``morphnet expand --target-flops`` (one width multiplier), then fine-tuning for
  the learning + fine-tuning epochs;
- ``torch-pruning``: Torch-Pruning's BN-scale sparse training on the torch definition, global
  pruning by BN scale at the ratio that lands at the target, then fine-tuning;
- ``onnxsim``: onnxsim's ONNX structured pruning (``apply_structured_pruning``, magnitude of
  the filters, no training) on the BN-folded export, sparsity bisected to the target, then
  fine-tuning through morphcli's wrapper;
- ``scratch-learned`` / ``scratch-uniform``: the structure MorphNet learned and the uniform
  one, freshly initialised (``morphnet apply --init scratch``) and trained with one schedule.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from morphcli.graph.builder import build_channel_graph  # noqa: E402
from morphcli.graph.model import load_model, model_from_proto  # noqa: E402
from morphcli.learn.objective import Objective  # noqa: E402
from morphcli.learn.progress import Progress  # noqa: E402
from morphcli.learn.train import Schedule, evaluate, fit  # noqa: E402
from morphcli.learn.wrapper import OnnxModule  # noqa: E402
from morphcli.outputs import save_model  # noqa: E402
from morphcli.resources.cost import build_cost_model  # noqa: E402
from morphcli.shrink.algorithm import run_shrink  # noqa: E402
from morphcli.shrink.config import ShrinkConfig  # noqa: E402
from morphcli.surgery.expand import run_expand  # noqa: E402
from morphcli.surgery.structure import run_apply, structure_doc  # noqa: E402
from sample_models.build import SAMPLE_DIR, export_onnx  # noqa: E402
from sample_models.train_fashion import seed_net  # noqa: E402

METHODS = ("morphnet", "uniform", "torch-pruning", "onnxsim")
SCRATCH = ("scratch-learned", "scratch-uniform")
# Training from scratch (labels only, no teacher) starts at a higher learning rate.
SCRATCH_LR = 0.05


@dataclass(frozen=True)
class Setting:
    """What every method of one run shares."""

    seed_model: str
    target: int  # percent of the seed's FLOPs
    seed: int
    work: str
    train: str  # .npz with x, y
    val: str  # .npz with x, y (held out from the training split)
    test: str  # .npz with x, y: the full test split, scored once at the end
    learn_epochs: int  # Torch-Pruning's sparse training
    finetune_epochs: int  # the learn_epochs + finetune_epochs are every method's total
    scratch_epochs: int
    batch_size: int
    lr: float
    distill_weight: float | None
    tp_reg: float
    width_floor: float  # morphnet's --width-floor
    morphnet_learn_epochs: int  # morphnet's share of the total for learning

    @property
    def epochs(self) -> int:
        return self.learn_epochs + self.finetune_epochs

    @property
    def onnx(self) -> Path:
        return SAMPLE_DIR / f"{self.seed_model}_fashion_trained.onnx"

    def path(self, method: str) -> Path:
        return Path(self.work) / f"{self.seed_model}_{self.target}_{self.seed}_{method}.onnx"

    def schedule(self, epochs: int, lr: float | None = None) -> Schedule:
        return Schedule(epochs, None, self.batch_size, "sgd", lr or self.lr, self.seed, True)


def flops_of(path: str | Path | onnx.ModelProto) -> float:
    model = model_from_proto(path, "m") if isinstance(path, onnx.ModelProto) else load_model(path)
    return build_cost_model(model, build_channel_graph(model)).flops()


def quiet() -> Progress:
    return Progress(Console(file=io.StringIO()), live=False)


def dataset(path: str) -> torch.utils.data.TensorDataset:
    with np.load(path) as arrays:
        return torch.utils.data.TensorDataset(
            torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
        )


def accuracy(path: Path, data: torch.utils.data.Dataset) -> float:
    return evaluate(OnnxModule.from_onnx(path), data, Objective(), 1000, "cpu")[1]


def _objective(s: Setting) -> Objective:
    """The fine-tuning loss every method uses: labels, with distillation from the seed."""
    if not s.distill_weight:
        return Objective()
    teacher = OnnxModule.from_onnx(s.onnx).eval().requires_grad_(False)
    return Objective(teacher, 1.0, s.distill_weight)


def _finetune(
    s: Setting, path: Path, epochs: int, lr: float | None = None, objective: Objective | None = None
) -> None:
    """Fine-tune the ONNX file at ``path`` in place through morphcli's wrapper."""
    torch.manual_seed(s.seed)
    module = OnnxModule.from_onnx(path)
    objective = objective or _objective(s)
    fit(module, dataset(s.train), objective, s.schedule(epochs, lr), "cpu", quiet(), "ft")
    module.to_onnx(path)


def morphnet(s: Setting) -> dict:
    out = s.path("morphnet")
    config = ShrinkConfig(
        model=str(s.onnx), output=str(out), target=f"{s.target}%", data=s.train,
        val_data=s.val, finetune_epochs=s.epochs - s.morphnet_learn_epochs,
        learn=Schedule(s.morphnet_learn_epochs, None, s.batch_size, "sgd", s.lr, s.seed),
        work_dir=f"{out}.work",
        distill_weight=s.distill_weight, export_structure=f"{out}.structure.json",
        width_floor=s.width_floor,
    )  # fmt: skip
    report = run_shrink(config, quiet())
    return {
        "path": out, "reduction": report["reduction"],
        "warnings": report["warnings"], "validation": report["validation"],
    }  # fmt: skip


def uniform(s: Setting) -> dict:
    out = s.path("uniform")
    run_expand(str(s.onnx), str(out), target=("flops", f"{s.target}%"))
    _finetune(s, out, s.epochs)
    return {"path": out}


def _torch_train(model, s: Setting, epochs: int, pruner=None, teacher=None) -> None:
    """morphcli's loop (same batches, cosine lr) on a torch module, with Torch-Pruning's
    regulariser during sparse training and the seed as teacher where the others distil."""
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9)
    schedule = s.schedule(epochs)
    data = dataset(s.train)
    per_epoch = schedule.steps_per_epoch(len(data))
    model.train()
    w = s.distill_weight or 0.0
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(s.seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(
            data, s.batch_size, shuffle=True, generator=generator, drop_last=True
        )
        for step, (x, y) in enumerate(loader):
            if pruner is None:
                for group in optimizer.param_groups:
                    group["lr"] = schedule.lr_at(epoch * per_epoch + step, epochs * per_epoch)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            if teacher is not None and w:
                with torch.no_grad():
                    target = torch.log_softmax(teacher(x), 1)
                kd = torch.nn.functional.kl_div(
                    torch.log_softmax(logits, 1), target, reduction="batchmean", log_target=True
                )
                loss = (1 - w) * loss + w * kd
            optimizer.zero_grad()
            loss.backward()
            if pruner is not None:
                pruner.regularize(model)
            optimizer.step()


def _seed_module(s: Setting) -> torch.nn.Module:
    model = seed_net(s.seed_model)
    model.load_state_dict(torch.load(s.onnx.with_suffix(".pt")))
    return model


def _tp_pruned(model, ratio: float, reg: float):
    import torch_pruning as tp

    model = copy.deepcopy(model)
    tp.pruner.BNScalePruner(
        model, torch.zeros(1, 1, 28, 28), importance=tp.importance.BNScaleImportance(),
        reg=reg, global_pruning=True, pruning_ratio=ratio, ignored_layers=[model.fc],
    ).step()  # fmt: skip
    return model


def torch_pruning(s: Setting) -> dict:
    import torch_pruning as tp

    out = s.path("torch-pruning")
    torch.manual_seed(s.seed)
    model = _seed_module(s)
    teacher = copy.deepcopy(model).eval()
    pruner = tp.pruner.BNScalePruner(
        model, torch.zeros(1, 1, 28, 28), importance=tp.importance.BNScaleImportance(),
        reg=s.tp_reg, global_pruning=True, ignored_layers=[model.fc],
    )  # fmt: skip
    _torch_train(model, s, s.learn_epochs, pruner=pruner, teacher=teacher)
    goal = s.target / 100 * flops_of(s.onnx)
    low, high = 0.0, 0.95  # the least pruning ratio whose result fits the target
    for _ in range(12):
        mid = (low + high) / 2
        export_onnx(_tp_pruned(model, mid, s.tp_reg), out)
        low, high = (low, mid) if flops_of(out) <= goal else (mid, high)
    model = _tp_pruned(model, high, s.tp_reg)
    _torch_train(model, s, s.finetune_epochs, teacher=teacher)
    export_onnx(model, out)
    return {"path": out, "pruning_ratio": high}


def onnxsim_pruning(s: Setting) -> dict:
    from onnxsim.pruning import apply_structured_pruning

    out = s.path("onnxsim")
    folded = s.path("onnxsim-folded")  # one per run: parallel runs of a seed must not share it
    export_onnx(_seed_module(s), folded, fold_bn=True)
    base = onnx.load(str(folded))
    goal = s.target / 100 * flops_of(s.onnx)
    low, high = 0.0, 0.99  # the least sparsity whose result fits the target
    best = None
    for _ in range(12):
        mid = (low + high) / 2
        pruned = apply_structured_pruning(base, sparsity=mid)
        if flops_of(pruned) <= goal:
            high, best = mid, pruned
        else:
            low = mid
    if best is None:
        return {"path": None, "reached_fraction": flops_of(pruned) / flops_of(s.onnx)}
    save_model(best, out)
    _finetune(s, out, s.epochs)
    return {"path": out, "sparsity": high}


def scratch(s: Setting, which: str) -> dict:
    """Train a structure from scratch: the one MorphNet learned at this seed, or uniform."""
    out = s.path(f"scratch-{which}")
    if which == "learned":
        structure = s.path("morphnet").with_suffix(".onnx.structure.json")
    else:
        structure = out.with_suffix(".uniform.json")
        uniform_widths = s.path("uniform")
        model = load_model(uniform_widths)
        structure.write_text(json.dumps(structure_doc(model, build_channel_graph(model))))
    run_apply(str(s.onnx), str(structure), str(out), init="scratch", seed=s.seed)
    _finetune(s, out, s.scratch_epochs, lr=SCRATCH_LR, objective=Objective())
    return {"path": out}


def recipe(method: str, s: Setting | argparse.Namespace) -> dict:
    """The settings a run of ``method`` depends on beyond the data and the optimizer, read
    from a run's ``Setting`` or from the benchmark's arguments (the same names): the uniform
    multiplier and onnxsim fine-tune for the total epochs, so a run of theirs holds for any
    split of them into learning and fine-tuning; scratch-learned trains the structure the
    morphnet run of its seed learned."""
    total = s.learn_epochs + s.finetune_epochs
    if method in ("uniform", "onnxsim"):
        return {"epochs": total}
    if method == "torch-pruning":
        return {"learn_epochs": s.learn_epochs, "finetune_epochs": s.finetune_epochs,
                "tp_reg": s.tp_reg}  # fmt: skip
    if method == "morphnet":
        learn = s.morphnet_learn_epochs
        return {"learn_epochs": learn, "finetune_epochs": total - learn,
                "width_floor": s.width_floor}  # fmt: skip
    if method == "scratch-learned":
        return {"scratch_epochs": s.scratch_epochs, "structure": recipe("morphnet", s)}
    return {"scratch_epochs": s.scratch_epochs}


def run_method(method: str, s: Setting) -> dict:
    if method == "morphnet":
        return morphnet(s)
    if method == "uniform":
        return uniform(s)
    if method == "torch-pruning":
        return torch_pruning(s)
    if method == "onnxsim":
        return onnxsim_pruning(s)
    return scratch(s, method.removeprefix("scratch-"))
