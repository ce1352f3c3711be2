"""Benchmark: OnnxModule against the hand-written torch module it was exported from.

The sample ResNet-style net (sample_models/nets.py ``ResNetStyle``) with its trained weights
(``resnet_fashion_trained.pt``) next to ``OnnxModule`` built from the same net's ONNX export
(``resnet_fashion_trained.onnx``). Times one training step (forward, cross-entropy, backward,
SGD step) and one inference (eval mode, no grad) at batch 64: the median of 20 runs after
warm-up, the two modules alternating in one process so that a change in machine load hits
both. Goal: OnnxModule / hand-written at most 1.10 for the training step. With ``--compile``
it also times both under ``torch.compile`` (slow to compile on a CPU).

Run: `.venv/bin/python bench/bench_wrapper.py [--threads N] [--compile] [--device cpu|cuda]`.
On a small machine shared with other work, ``--threads 1`` gives stable numbers: torch's
threads waiting on each other under contention swamp the difference being measured.
Saves bench/results/wrapper.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from morphcli.learn.wrapper import OnnxModule  # noqa: E402
from sample_models.nets import ResNetStyle  # noqa: E402

SAMPLES = ROOT / "sample_models"
RESULTS = ROOT / "bench" / "results" / "wrapper.json"
BATCH, RUNS, WARMUP = 64, 20, 5
GOAL = 1.10


def modules(device: str) -> dict[str, nn.Module]:
    """The hand-written net and the OnnxModule, same trained weights, on ``device``."""
    net = ResNetStyle()
    net.load_state_dict(torch.load(SAMPLES / "resnet_fashion_trained.pt"))
    wrapped = OnnxModule.from_onnx(SAMPLES / "resnet_fashion_trained.onnx")
    return {"hand-written": net.to(device), "OnnxModule": wrapped.to(device)}


def train_step(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        module.train()
        loss = loss_fn(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def inference(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        module.eval()
        with torch.no_grad():
            module(x)

    return run


def median_ms(fns: dict[str, Callable[[], None]], sync: Callable[[], None]) -> dict[str, float]:
    """Median milliseconds of each callable, calls alternating after WARMUP rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(WARMUP + RUNS):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_ >= WARMUP:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def run(device: str, compile_too: bool) -> dict:
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    x = torch.rand(BATCH, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    built = modules(device)
    variants = {"eager": built}
    if compile_too:
        variants["compiled"] = {name: torch.compile(m) for name, m in built.items()}
    results = {}
    for variant, mods in variants.items():
        start = time.perf_counter()
        rows = {
            "train step": median_ms({n: train_step(m, x, y) for n, m in mods.items()}, sync),
            "inference": median_ms({n: inference(m, x) for n, m in mods.items()}, sync),
        }
        results[variant] = {
            task: {**ms, "ratio": ms["OnnxModule"] / ms["hand-written"]}
            for task, ms in rows.items()
        }
        results[variant]["seconds"] = time.perf_counter() - start
    return {
        "model": "sample_models/resnet_fashion_trained.onnx vs nets.ResNetStyle",
        "device": device,
        "batch": BATCH,
        "runs": RUNS,
        "warmup": WARMUP,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "goal_train_ratio": GOAL,
        "results": results,
    }


def show(report: dict) -> None:
    title = (
        f"OnnxModule vs hand-written ResNetStyle, batch {BATCH} "
        f"({report['device']}, {report['threads']} threads)"
    )
    table = Table(title=title)
    for column in ("mode", "task", "hand-written ms", "OnnxModule ms", "ratio"):
        table.add_column(column, justify="left" if column in ("mode", "task") else "right")
    for variant, tasks in report["results"].items():
        for task in ("train step", "inference"):
            row = tasks[task]
            table.add_row(
                variant,
                task,
                f"{row['hand-written']:.2f}",
                f"{row['OnnxModule']:.2f}",
                f"{row['ratio']:.3f}",
            )
    console = Console()
    console.print(table)
    ratio = report["results"]["eager"]["train step"]["ratio"]
    verdict = "met" if ratio <= GOAL else "NOT met"
    console.print(f"train-step goal (ratio <= {GOAL}): {verdict} ({ratio:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.device, args.compile)
    show(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
