"""Benchmark: `shrink --target-latency 50%` against `shrink --target-flops` tuned to the same
measured latency, on the trained Fashion-MNIST sample; test accuracy side by side.

For each seed: shrink the trained ResNet-style sample to 50% of its measured onnxruntime
latency (``--latency-batch`` images per run, ``--ort-threads`` threads), then shrink it to a
FLOPs target tuned (secant on the FLOPs share, each try a full shrink run, measuring its
result against the input) to the latency the first run measured. Both runs use the same data
(``--train-samples`` images of the training split), schedule and seed; both results are
measured head to head (round-robin, median, 95% interval) and scored on the full 10k test
split. The latency model is measured once, into a fresh cache.

At batch 1 and one thread this network spends over half its time in per-kernel overhead, so
50% of its latency is not reachable at any width: the default latency batch is 32.

    python bench/bench_latency_shrink.py                          # a few minutes per seed
    python bench/bench_latency_shrink.py --seeds 0 --train-samples 4000   # a quick look

Saves bench/results/latency_shrink.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
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
sys.path.insert(0, str(ROOT / "bench"))

from bench_latency import tune_share  # noqa: E402

from morphcli.errors import MorphError  # noqa: E402
from morphcli.graph.builder import build_channel_graph  # noqa: E402
from morphcli.graph.load import read_proto  # noqa: E402
from morphcli.graph.model import load_model  # noqa: E402
from morphcli.graph.runtime import Runtime  # noqa: E402
from morphcli.learn.objective import Objective  # noqa: E402
from morphcli.learn.progress import Progress  # noqa: E402
from morphcli.learn.train import Schedule, evaluate  # noqa: E402
from morphcli.learn.wrapper import OnnxModule  # noqa: E402
from morphcli.resources.cost import build_cost_model  # noqa: E402
from morphcli.shrink.algorithm import run_shrink  # noqa: E402
from morphcli.shrink.config import ShrinkConfig  # noqa: E402
from morphcli.surgery.latency import LatencySetup  # noqa: E402
from morphcli.surgery.latency_target import compare  # noqa: E402
from morphcli.surgery.widths import multiplier_widths  # noqa: E402
from sample_models.fashion_mnist import load_full  # noqa: E402

RETRIES = 4
MODEL = ROOT / "sample_models" / "resnet_fashion_trained.onnx"
RESULTS = ROOT / "bench" / "results" / "latency_shrink.json"
TARGET = "50%"


def quiet() -> Progress:
    return Progress(Console(file=io.StringIO()), live=False)


def shrink(args, work: Path, name: str, resource: str, target: str, seed: int, setup) -> dict:
    out = work / f"{name}_{seed}.onnx"
    config = ShrinkConfig(
        model=str(MODEL), output=str(out), target=target, resource=resource,
        data=str(work / "train.npz"), val_data=str(work / "test.npz"),
        learn=Schedule(args.learn_epochs, None, args.batch_size, "sgd", args.lr, seed),
        finetune_epochs=args.finetune_epochs, work_dir=str(work / f"{name}_{seed}.work"),
        round_to=args.round_to, latency=setup,
    )  # fmt: skip
    report = run_shrink(config, quiet())
    steps = report["steps"]
    return {"path": out, "report": report, "flops_kept": steps[-1]["flops"] / steps[0]["flops"]}


def test_accuracy(path: Path, test) -> float:
    return evaluate(OnnxModule.from_onnx(path), test, Objective(), 1000, "cpu")[1]


def run_seed(args, work: Path, setup: LatencySetup, test, seed: int) -> dict:
    started = time.perf_counter()
    model = load_model(MODEL)
    reference = model.to_proto()
    by_latency = shrink(args, work, "latency", "latency", TARGET, seed, setup)
    section = by_latency["report"]["latency"]
    print(f"  seed {seed}: latency run measured {section['measured_ratio']:.3f}", flush=True)
    results: dict[float, dict] = {}

    def run(asked: float) -> tuple[float, float]:
        share = asked
        for _ in range(RETRIES):  # coarse --round-to can miss the FLOPs band: a bit more
            try:
                result = shrink(args, work, f"flops{len(results)}", "flops",
                                f"{100 * share:.3f}%", seed, setup)  # fmt: skip
                break
            except MorphError as error:
                print(f"  seed {seed}: FLOPs {share:.3f}: {error.message}", flush=True)
                share *= 1.1
        else:
            raise RuntimeError(f"no FLOPs target near {share:.3f} could be met")
        ratio = compare(reference, read_proto(result["path"]), model, setup).ratio
        results[asked] = result
        print(f"  seed {seed}: FLOPs {share:.3f} measured {ratio:.3f}", flush=True)
        return ratio, result["flops_kept"]

    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    narrowest = multiplier_widths(cg, 1e-9, args.round_to).astype(float)
    low = 1.001 * cm.flops(narrowest) / cm.flops()  # what the pinned channels alone cost
    best, tries = tune_share(run, section["measured_ratio"], by_latency["flops_kept"],
                             steps=args.tune_steps, low=low)  # fmt: skip
    by_flops = results[best["share"]]
    head = compare(read_proto(by_flops["path"]), read_proto(by_latency["path"]), model, setup)
    return {
        "seed": seed,
        "latency": {
            "measured_ratio": section["measured_ratio"], "fraction_of_target":
            section["fraction_of_target"], "met": section["met"],
            "flops_kept": by_latency["flops_kept"],
            "accuracy": test_accuracy(by_latency["path"], test),
            "widths": by_latency["report"]["steps"][-1]["widths"],
        },
        "flops": {
            "share": best["share"], "measured_ratio": best["ratio"],
            "flops_kept": by_flops["flops_kept"],
            "accuracy": test_accuracy(by_flops["path"], test),
            "widths": by_flops["report"]["steps"][-1]["widths"],
        },
        "tries": tries,
        "latency_vs_flops_result": {"ratio": head.ratio, "interval": list(head.interval)},
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def render(runs: list[dict], base_accuracy: float, args) -> None:
    table = Table(
        title=f"shrink --target-latency {TARGET} vs --target-flops tuned to the same measured "
        f"latency (batch {args.latency_batch}, {args.ort_threads} thread(s), --round-to "
        f"{args.round_to}; input accuracy "
        f"{base_accuracy:.2%})", title_justify="left",
    )  # fmt: skip
    for name in ("seed", "lat: ratio", "in band", "FLOPs", "accuracy", "flops: ratio", "FLOPs",
                 "accuracy", "lat./flops ms"):  # fmt: skip
        table.add_column(name, justify="right")
    for r in runs:
        lat, flo, head = r["latency"], r["flops"], r["latency_vs_flops_result"]
        table.add_row(
            str(r["seed"]), f"{lat['measured_ratio']:.3f}", "yes" if lat["met"] else "NO",
            f"{lat['flops_kept']:.3f}", f"{lat['accuracy']:.2%}", f"{flo['measured_ratio']:.3f}",
            f"{flo['flops_kept']:.3f}", f"{flo['accuracy']:.2%}",
            f"{head['ratio']:.3f} ({head['interval'][0]:.3f}-{head['interval'][1]:.3f})",
        )  # fmt: skip
    Console(width=150).print(table)
    if len(runs) > 1:
        gap = np.array([r["latency"]["accuracy"] - r["flops"]["accuracy"] for r in runs])
        half = 1.96 * gap.std(ddof=1) / np.sqrt(len(gap))
        print(f"accuracy, latency-targeted minus FLOPs-tuned: {gap.mean():+.2%} +- {half:.2%} "
              f"(95% interval over {len(gap)} paired seeds)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--learn-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--ort-threads", type=int, default=1)
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--tune-steps", type=int, default=3)
    parser.add_argument("--round-to", type=int, default=1, help="widths' multiple, both runs")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = load_full()
    pick = np.random.default_rng(0).permutation(len(x_train))[: args.train_samples]
    x_train, y_train = x_train[pick], y_train[pick]
    test = torch.utils.data.TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    base_accuracy = test_accuracy(MODEL, test)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-shrink-") as folder:
        work = Path(folder)
        np.savez(work / "train.npz", x=x_train, y=y_train)
        np.savez(work / "test.npz", x=x_test, y=y_test)
        runtime = Runtime(threads=args.ort_threads, batch=args.latency_batch)
        setup = LatencySetup(runtime, str(work / "cache"))
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(run_seed(args, work, setup, test, seed))
            print(json.dumps(runs[-1], default=float), flush=True)
    render(runs, base_accuracy, args)
    doc = {
        "settings": vars(args), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "input_accuracy": base_accuracy, "runs": runs,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
