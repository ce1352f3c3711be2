"""Benchmark: training images per second of shrink's learning phase against a hand-written
torch loop, in 1 and 2 processes (torchrun, gloo, 1 thread each), with and without loader
workers.

Both train the same ``OnnxModule`` (the sample Fashion-MNIST ResNet) on the same data (1024
images of the committed subset, memory-mapped from an uncompressed .npz) the same way: SGD on
cross entropy, global batch 64, each step followed by the MorphNet penalty's proximal step
(``penalty.shrink(lr * lambda)``) with lambda auto's calibrated start. shrink's side is
``fit`` as the learning phase calls it (DDP, the penalty's alive counts averaged over
processes, lambda auto checks, progress, per-epoch means). The hand-written side is what a
user of the Python API would write: DDP, a DistributedSampler, a DataLoader, then
``ce.backward(); opt.step(); penalty.shrink(lr * lam, opt)``. Each repeat runs one of each,
alternating, two epochs, and times the second (workers already up), so a change of machine
load hits both. Goals: shrink / hand-written >= 0.90, and 2 processes x 1 thread >= 1.6 x
1 process x 1 thread. Intervals are 95% bootstrap intervals over the repeats.

Run: `.venv/bin/python bench/bench_train.py [--repeats 5] [--samples 1024]
[--device cuda --precision bf16]`. Saves bench/results/train.json. On a machine shared with
other work the 2-process scaling is not measured fairly (the processes wait for each other
at every all-reduce); run it on a quiet machine with at least 2 free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train.json"
MODEL = ROOT / "sample_models" / "resnet_fashion_trained.onnx"
SUBSET = ROOT / "sample_models" / "fashion_mnist_subset.npz"
BATCH, LR, GOAL_FRACTION = 64, 0.01, 0.5
GOAL_RATIO, GOAL_SCALING = 0.90, 1.6
CONFIGS = [(1, 0), (1, 2), (2, 0), (2, 2)]  # (processes, loader workers)


def _strength(penalty, steps: int):
    """lambda auto's start for a phase of ``steps`` (the same for both loops)."""
    from morphcli.learn.strength import Strength

    return Strength.calibrated(penalty, GOAL_FRACTION * penalty.cost(), LR, steps)


def _hand_written_epoch(module, data, world, workers, device, precision, epoch) -> float:
    """One epoch of the plain torch loop; returns its images per second (all processes)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    from morphcli.learn.penalty import MorphNetPenalty

    sampler = DistributedSampler(data, world.size, world.rank, seed=0, drop_last=True)
    loader = DataLoader(
        data, batch_size=BATCH // world.size, sampler=sampler, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0,
        pin_memory=device.startswith("cuda"),
    )  # fmt: skip
    penalty = MorphNetPenalty(module)
    strength = _strength(penalty, len(loader) * (epoch + 1))
    model = module
    if world.distributed:
        device_ids = [world.local_rank] if device.startswith("cuda") else None
        model = DistributedDataParallel(module, device_ids=device_ids)
    optimizer = torch.optim.SGD(module.parameters(), lr=LR, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    rate = 0.0
    for current in range(epoch + 1):
        sampler.set_epoch(current)
        started, images = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(torch.device(device).type, dtype, enabled=dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            penalty.shrink(LR * strength.value, optimizer)
            images += len(x) * world.size
        rate = images / (time.perf_counter() - started)
    return rate


def _shrink_epoch(module, data, world, workers, device, precision, epoch) -> float:
    """The same epochs through ``fit`` as shrink's learning phase runs it."""
    from rich.console import Console

    from morphcli.learn.execution import Execution
    from morphcli.learn.objective import Objective
    from morphcli.learn.penalty import MorphNetPenalty
    from morphcli.learn.precision import Precision
    from morphcli.learn.progress import Progress
    from morphcli.learn.train import Schedule, fit

    agree = world.mean if world.distributed else None
    penalty = MorphNetPenalty(module, agree=agree)
    execution = Execution(world, Precision.for_device(precision, device), workers)
    schedule = Schedule(epochs=epoch + 1, batch_size=BATCH, lr=LR)
    quiet = Progress(Console(quiet=True), live=False)
    strength = _strength(penalty, schedule.steps_per_epoch(len(data)) * (epoch + 1))
    history = fit(
        module, data, Objective(), schedule, device, quiet, "learn", penalty=penalty,
        strength=strength, execution=execution,
    )  # fmt: skip
    return history[-1].images_per_s


def worker(args: argparse.Namespace) -> None:
    """One process of a configuration: alternate the two loops, rank 0 saves the rates."""
    import torch

    from morphcli.learn.distributed import start_world
    from morphcli.learn.npz import ArrayDataset, read_npz
    from morphcli.learn.wrapper import OnnxModule

    torch.set_num_threads(args.threads)
    world = start_world(args.device)
    arrays = read_npz(args.data)
    data = ArrayDataset(arrays["x"], torch.from_numpy(np.asarray(arrays["y"])))
    base = OnnxModule.from_onnx(MODEL).to(world.device)
    rates = {"shrink": [], "hand-written": []}
    loops = {"shrink": _shrink_epoch, "hand-written": _hand_written_epoch}
    for _ in range(args.repeats):
        for name, loop in loops.items():
            module = OnnxModule.from_onnx(MODEL).to(world.device)
            module.load_state_dict(base.state_dict())
            rates[name].append(
                loop(module, data, world, args.workers, world.device, args.precision, 1)
            )
    if world.main:
        Path(args.out).write_text(json.dumps(rates))
    world.close()


def _interval(values: np.ndarray, rng: np.random.Generator) -> list[float]:
    means = [rng.choice(values, len(values)).mean() for _ in range(2000)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _ratio_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> list[float]:
    ratios = [rng.choice(a, len(a)).mean() / rng.choice(b, len(b)).mean() for _ in range(2000)]
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def run_config(args: argparse.Namespace, processes: int, workers: int, data: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rates.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(processes), __file__, "--worker", "--out", str(out),
            "--data", str(data), "--workers", str(workers), "--repeats", str(args.repeats),
            "--threads", str(args.threads), "--device", args.device,
            "--precision", args.precision,
        ]  # fmt: skip
        env = {
            **os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{processes} x {workers} workers failed:\n{done.stderr[-3000:]}")
        rates = json.loads(out.read_text())
    rng = np.random.default_rng(0)
    shrink, hand = np.array(rates["shrink"]), np.array(rates["hand-written"])
    paired = shrink / hand
    return {
        "processes": processes,
        "workers": workers,
        "shrink_images_per_s": rates["shrink"],
        "hand_written_images_per_s": rates["hand-written"],
        "shrink_mean": float(shrink.mean()),
        "hand_written_mean": float(hand.mean()),
        "ratio_mean": float(paired.mean()),
        "ratio_interval_95": _interval(paired, rng),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from rich.console import Console
    from rich.table import Table

    started, load = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "train.npz"
        arrays = np.load(SUBSET)
        np.savez(data, x=arrays["x"][: args.samples], y=arrays["y"][: args.samples])
        rows = [run_config(args, p, w, data) for p, w in CONFIGS]
    rng = np.random.default_rng(1)
    scaling = {}
    for workers in sorted({w for _, w in CONFIGS}):
        one, two = (
            np.array(
                next(r for r in rows if r["processes"] == p and r["workers"] == workers)[
                    "shrink_images_per_s"
                ]
            )
            for p in (1, 2)
        )
        scaling[f"{workers} workers"] = {
            "two_over_one": float(two.mean() / one.mean()),
            "interval_95": _ratio_interval(two, one, rng),
        }
    report = {
        "model": str(MODEL.relative_to(ROOT)),
        "samples": args.samples, "batch": BATCH, "repeats": args.repeats,
        "threads_per_process": args.threads, "device": args.device,
        "precision": args.precision, "cpus": os.cpu_count(),
        "load_average_before": load, "load_average_after": os.getloadavg(),
        "goal_ratio": GOAL_RATIO, "goal_scaling": GOAL_SCALING,
        "configs": rows, "scaling": scaling, "seconds": time.perf_counter() - started,
    }  # fmt: skip
    table = Table(title=f"training images/s, {args.device} {args.precision}, batch {BATCH}")
    for column in ("processes", "workers", "shrink", "hand-written", "ratio [95%]"):
        table.add_column(column, justify="right")
    for row in rows:
        low, high = row["ratio_interval_95"]
        table.add_row(
            str(row["processes"]), str(row["workers"]), f"{row['shrink_mean']:.0f}",
            f"{row['hand_written_mean']:.0f}", f"{row['ratio_mean']:.3f} [{low:.3f}, {high:.3f}]",
        )  # fmt: skip
    console = Console()
    console.print(table)
    worst = min(row["ratio_mean"] for row in rows)
    verdict = "met" if worst >= GOAL_RATIO else "NOT met"
    console.print(f"shrink / hand-written >= {GOAL_RATIO}: {verdict} (worst {worst:.3f})")
    for name, value in scaling.items():
        low, high = value["interval_95"]
        verdict = "met" if value["two_over_one"] >= GOAL_SCALING else "NOT met"
        console.print(
            f"2 processes / 1 process ({name}) >= {GOAL_SCALING}: {verdict} "
            f"({value['two_over_one']:.2f} [{low:.2f}, {high:.2f}])"
        )
    console.print(f"load average {load[0]:.1f} before, {report['load_average_after'][0]:.1f} after")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
