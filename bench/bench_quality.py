"""Quality benchmark: MorphNet shrink against two baselines at equal FLOPs on Fashion-MNIST.

From the trained ResNet-style sample, at each FLOPs target (a fraction of its FLOPs):

- morphnet: ``morphnet shrink`` (structure learning with the penalty for ``--learn-epochs``,
  remove, expand to the target, fine-tune for ``--finetune-epochs``);
- uniform: ``morphnet expand --target-flops`` (one width multiplier, most important channels
  kept), then fine-tuning for learn + fine-tune epochs (the same training budget);
- torch-pruning: Torch-Pruning's BN-scale sparse training (``BNScalePruner``, L1 on BN scales)
  for ``--learn-epochs`` on the torch definition of the sample, global pruning by BN scale at
  the pruning ratio that lands at the FLOPs target, then ``--finetune-epochs`` of fine-tuning.

Every run uses the same data (the full training split, ``--train-samples`` of it if given),
SGD with momentum 0.9 at the same learning rate and batch size, cosine decay in fine-tuning,
and is scored on the full 10k test split; FLOPs are counted by morphcli's cost model on the
written ONNX file for all three. Prints a table of test accuracy (mean, standard deviation over
seeds) and FLOPs, and saves it to ``bench/results/quality.json``.

    python bench/bench_quality.py                      # the full benchmark (tens of minutes)
    python bench/bench_quality.py --train-samples 4000 --seeds 0 --targets 50   # a quick look

torch-pruning is a bench-only dependency: ``pip install --no-deps torch-pruning``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from morphcli.graph.builder import build_channel_graph  # noqa: E402
from morphcli.graph.model import load_model  # noqa: E402
from morphcli.learn.objective import Objective  # noqa: E402
from morphcli.learn.progress import Progress  # noqa: E402
from morphcli.learn.train import Schedule, evaluate, fit  # noqa: E402
from morphcli.learn.wrapper import OnnxModule  # noqa: E402
from morphcli.resources.cost import build_cost_model  # noqa: E402
from morphcli.shrink.algorithm import run_shrink  # noqa: E402
from morphcli.shrink.config import ShrinkConfig  # noqa: E402
from morphcli.surgery.expand import run_expand  # noqa: E402
from sample_models.build import export_onnx  # noqa: E402
from sample_models.fashion_mnist import load_full  # noqa: E402
from sample_models.nets import ResNetStyle  # noqa: E402

MODEL = ROOT / "sample_models" / "resnet_fashion_trained.onnx"
STATE = ROOT / "sample_models" / "resnet_fashion_trained.pt"
RESULTS = ROOT / "bench" / "results" / "quality.json"
METHODS = ("morphnet", "uniform", "torch-pruning")


def flops_of(path: Path) -> float:
    model = load_model(path)
    return build_cost_model(model, build_channel_graph(model)).flops()


def test_accuracy(path: Path, test: torch.utils.data.Dataset) -> float:
    module = OnnxModule.from_onnx(path)
    return evaluate(module, test, Objective(), 1000, "cpu")[1]


def quiet() -> Progress:
    return Progress(Console(file=io.StringIO()), live=False)


def run_morphnet(args, work: Path, target: int, seed: int) -> Path:
    out = work / f"morphnet_{target}_{seed}.onnx"
    config = ShrinkConfig(
        model=str(MODEL),
        output=str(out),
        target=f"{target}%",
        data=str(work / "train.npz"),
        val_data=str(work / "test.npz"),
        learn=Schedule(args.learn_epochs, None, args.batch_size, "sgd", args.lr, seed),
        finetune_epochs=args.finetune_epochs,
        work_dir=str(work / f"morphnet_{target}_{seed}.work"),
    )
    report = run_shrink(config, quiet())
    print(f"  morphnet widths: {list(report['steps'][-1]['widths'].values())}", flush=True)
    return out


def run_uniform(args, work: Path, train, target: int, seed: int) -> Path:
    out = work / f"uniform_{target}_{seed}.onnx"
    run_expand(str(MODEL), str(out), target=("flops", f"{target}%"))
    torch.manual_seed(seed)
    module = OnnxModule.from_onnx(out)
    epochs = args.learn_epochs + args.finetune_epochs
    schedule = Schedule(epochs, None, args.batch_size, "sgd", args.lr, seed, cosine=True)
    fit(module, train, Objective(), schedule, "cpu", quiet(), "uniform")
    module.to_onnx(out)
    return out


def _torch_train(model, train, args, epochs, seed, pruner=None, cosine=False) -> None:
    """The same loop as morphcli's fit, on a torch module, with Torch-Pruning's L1 step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    schedule = Schedule(epochs, None, args.batch_size, "sgd", args.lr, seed, cosine=cosine)
    per_epoch = schedule.steps_per_epoch(len(train))
    model.train()
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(
            train, args.batch_size, shuffle=True, generator=generator, drop_last=True
        )
        for step, (x, y) in enumerate(loader):
            if cosine:
                for group in optimizer.param_groups:
                    group["lr"] = schedule.lr_at(epoch * per_epoch + step, epochs * per_epoch)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            if pruner is not None:
                pruner.regularize(model)
            optimizer.step()


def _pruned(model, ratio: float, reg: float):
    import torch_pruning as tp

    model = copy.deepcopy(model)
    pruner = tp.pruner.BNScalePruner(
        model,
        torch.zeros(1, 1, 28, 28),
        importance=tp.importance.BNScaleImportance(),
        reg=reg,
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=[model.fc],
    )
    pruner.step()
    return model


def run_torch_pruning(args, work: Path, train, target: int, seed: int) -> Path:
    import torch_pruning as tp

    out = work / f"torch-pruning_{target}_{seed}.onnx"
    torch.manual_seed(seed)
    model = ResNetStyle()
    model.load_state_dict(torch.load(STATE))
    pruner = tp.pruner.BNScalePruner(
        model,
        torch.zeros(1, 1, 28, 28),
        importance=tp.importance.BNScaleImportance(),
        reg=args.tp_reg,
        global_pruning=True,
        ignored_layers=[model.fc],
    )
    _torch_train(model, train, args, args.learn_epochs, seed, pruner=pruner)
    goal = target / 100 * flops_of(MODEL)
    low, high = 0.0, 0.95  # pruning ratios: low meets nothing yet, find the least that fits
    for _ in range(12):
        mid = (low + high) / 2
        export_onnx(_pruned(model, mid, args.tp_reg), out)
        if flops_of(out) <= goal:
            high = mid
        else:
            low = mid
    model = _pruned(model, high, args.tp_reg)
    _torch_train(model, train, args, args.finetune_epochs, seed, cosine=True)
    export_onnx(model, out)
    return out


def summarise(results: list[dict], base_flops: float) -> list[dict]:
    rows = []
    for target in sorted({r["target"] for r in results}, reverse=True):
        for method in METHODS:
            runs = [r for r in results if r["target"] == target and r["method"] == method]
            if not runs:
                continue
            accuracy = np.array([r["accuracy"] for r in runs])
            flops = np.array([r["flops"] for r in runs])
            rows.append(
                {
                    "target_percent": target,
                    "method": method,
                    "seeds": len(runs),
                    "accuracy_mean": float(accuracy.mean()),
                    "accuracy_std": float(accuracy.std(ddof=1)) if len(runs) > 1 else 0.0,
                    "flops_mean": float(flops.mean()),
                    "flops_fraction": float(flops.mean() / base_flops),
                    "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
                }
            )
    return rows


def render(rows: list[dict], base_accuracy: float) -> None:
    table = Table(title=f"Fashion-MNIST test accuracy (input model: {base_accuracy:.2%})")
    for name in ("target", "method", "seeds", "accuracy", "std", "FLOPs", "of input", "time"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for row in rows:
        table.add_row(
            f"{row['target_percent']}%",
            row["method"],
            str(row["seeds"]),
            f"{row['accuracy_mean']:.2%}",
            f"{row['accuracy_std']:.2%}",
            f"{row['flops_mean'] / 1e6:.2f}M",
            f"{row['flops_fraction']:.3f}",
            f"{row['seconds_mean']:.0f}s",
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="50,25", help="FLOPs targets in percent")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--learn-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--tp-reg", type=float, default=1e-4, help="Torch-Pruning's BN L1 reg")
    parser.add_argument("--train-samples", type=int, help="use only this many training images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = load_full()
    if args.train_samples:
        pick = np.random.default_rng(0).permutation(len(x_train))[: args.train_samples]
        x_train, y_train = x_train[pick], y_train[pick]
    train = torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    test = torch.utils.data.TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    base_flops, base_accuracy = flops_of(MODEL), test_accuracy(MODEL, test)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        np.savez(work / "train.npz", x=x_train, y=y_train)
        np.savez(work / "test.npz", x=x_test, y=y_test)
        for target in (int(t) for t in args.targets.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                for method in args.methods.split(","):
                    started = time.perf_counter()
                    if method == "morphnet":
                        path = run_morphnet(args, work, target, seed)
                    elif method == "uniform":
                        path = run_uniform(args, work, train, target, seed)
                    else:
                        path = run_torch_pruning(args, work, train, target, seed)
                    result = {
                        "method": method,
                        "target": target,
                        "seed": seed,
                        "accuracy": test_accuracy(path, test),
                        "flops": flops_of(path),
                        "seconds": time.perf_counter() - started,
                    }
                    results.append(result)
                    print(json.dumps(result), flush=True)
    rows = summarise(results, base_flops)
    render(rows, base_accuracy)
    doc = {
        "settings": vars(args),
        "input": {"flops": base_flops, "accuracy": base_accuracy},
        "table": rows,
        "runs": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
