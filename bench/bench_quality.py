"""Quality benchmark: MorphNet ``shrink`` against the simple alternatives at equal FLOPs.

From each trained seed model (``sample_models/*_fashion_trained.onnx``: the narrow ResNet and
the over-parameterized nets trained so far), at each FLOPs target (a percent of the seed's
FLOPs), every method of ``quality_methods`` produces a fine-tuned model with the same training
data, the same SGD settings and the same total training epochs, ``--learn-epochs`` +
``--finetune-epochs`` (MorphNet: ``--morphnet-learn-epochs`` of them structure learning, the
rest fine-tuning; Torch-Pruning: ``--learn-epochs`` of sparse training, the rest fine-tuning;
the others: all fine-tuning). Seeds are paired: seed s fixes the data order of every method.
MorphNet and uniform run ``--paired-seeds`` seeds, the others ``--other-seeds``. Each run's
model is scored once, at the end, on the full 10k test split; FLOPs are counted on the written
ONNX file by morphcli's cost model. The table gives mean and standard deviation over seeds and
the paired difference to MorphNet with its 95% t interval. Every run is saved to
``bench/results/quality.json`` as it finishes; a later invocation keeps the saved runs it would
repeat (the same data and optimizer settings and the same ``quality_methods.recipe``) and runs
the rest (``--rerun morphnet`` reruns MorphNet's runs after a change to its code, ``--fresh``
every run). Every method fine-tunes with the same loss: cross entropy mixed with distillation
from the seed (``--distill-weight``, 0.5). The from-scratch structure test (``scratch-learned``
against ``scratch-uniform``, labels only, no teacher) runs at ``--scratch-targets``.

    python bench/bench_quality.py            # the full benchmark (about 82 minutes: README)
    python bench/bench_quality.py --quick --out /tmp/quick.json   # under 10 minutes

Needs the full Fashion-MNIST (Debian's dataset-fashion-mnist) and the bench-only packages
torch-pruning and onnxsim==0.8.1 (``make bench-quality`` installs them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality_methods import (  # noqa: E402
    METHODS,
    SCRATCH,
    Setting,
    accuracy,
    dataset,
    flops_of,
    recipe,
)

from morphcli.shrink.config import WIDTH_FLOOR  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "quality.json"
SEED_MODELS = ("resnet", "vgg", "resnet2x", "mobilenetv2")
# The seeds trained so far (``sample_models/train_fashion.py --net NAME`` adds the others).
TRAINED = [m for m in SEED_MODELS if (ROOT / f"sample_models/{m}_fashion_trained.onnx").exists()]
# Two-sided 95% Student t quantiles by degrees of freedom.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def interval(values: np.ndarray) -> float:
    """Half width of the 95% t interval of the mean of ``values``."""
    if len(values) < 2:
        return float("nan")
    return T95.get(len(values) - 1, 1.96) * float(values.std(ddof=1)) / np.sqrt(len(values))


def run_job(job: tuple[Setting, tuple[str, ...], int]) -> list[dict]:
    """One seed of one (model, target): its methods in order (scratch runs read the
    structures of the morphnet and uniform runs)."""
    import torch
    from quality_methods import run_method

    setting, methods, threads = job
    torch.set_num_threads(threads)
    test = dataset(setting.test)
    results = []
    for method in methods:
        started = time.perf_counter()
        info = run_method(method, setting)
        path = info.pop("path")
        result = {
            "model": setting.seed_model, "target": setting.target, "seed": setting.seed,
            "method": method, "recipe": recipe(method, setting),
            "seconds": time.perf_counter() - started, **info,
            "accuracy": None if path is None else accuracy(path, test),
            "flops": None if path is None else flops_of(path),
        }  # fmt: skip
        results.append(result)
        print(json.dumps(result), flush=True)
    return results


def summarise(results: list[dict], base: dict[str, dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["model"], r["target"]) for r in results}, key=lambda k: (k[0], -k[1]))
    for model, target in keys:
        runs = [r for r in results if r["model"] == model and r["target"] == target]
        for method in (*METHODS, *SCRATCH):
            mine = [r for r in runs if r["method"] == method and r["accuracy"] is not None]
            if not mine:
                continue
            acc = np.array([r["accuracy"] for r in mine])
            row = {
                "model": model, "target_percent": target, "method": method, "seeds": len(mine),
                "accuracy_mean": float(acc.mean()),
                "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "flops_fraction": float(np.mean([r["flops"] for r in mine]))
                / base[model]["flops"],
                "seconds_mean": float(np.mean([r["seconds"] for r in mine])),
            }  # fmt: skip
            reference = "scratch-learned" if method == "scratch-uniform" else "morphnet"
            ref = {r["seed"]: r["accuracy"] for r in runs if r["method"] == reference}
            paired = [ref[r["seed"]] - r["accuracy"] for r in mine if r["seed"] in ref]
            if method not in ("morphnet", "scratch-learned") and paired:
                diff = np.array(paired)
                row["reference"] = reference
                row["paired_diff_mean"] = float(diff.mean())
                row["paired_diff_ci95"] = interval(diff)
                row["paired_seeds"] = len(diff)
            rows.append(row)
    return rows


def render(rows: list[dict], base: dict[str, dict]) -> None:
    table = Table(title="Fashion-MNIST test accuracy (full 10k test split)")
    columns = ("model", "target", "method", "n", "accuracy", "std", "FLOPs", "ref - this", "time")
    for name in columns:
        table.add_column(name, justify="left" if name in ("model", "method") else "right")
    for row in rows:
        diff = ""
        if "paired_diff_mean" in row:
            diff = f"{100 * row['paired_diff_mean']:+.2f} ± {100 * row['paired_diff_ci95']:.2f}"
        table.add_row(
            f"{row['model']} ({base[row['model']]['accuracy']:.2%})",
            f"{row['target_percent']}%", row["method"], str(row["seeds"]),
            f"{row['accuracy_mean']:.2%}", f"{100 * row['accuracy_std']:.2f}",
            f"{row['flops_fraction']:.3f}", diff, f"{row['seconds_mean']:.0f}s",
        )  # fmt: skip
    Console(width=140).print(table)
    Console().print(
        "ref - this: paired difference (percentage points) to MorphNet (scratch-uniform: to "
        "scratch-learned), mean ± 95% t interval half width over the paired seeds"
    )


def _data(work: Path, train_samples: int, val_samples: int) -> tuple[str, str, str]:
    """Training and validation subsets (disjoint, from the training split) and the test set."""
    from sample_models.fashion_mnist import load_full

    x_train, y_train, x_test, y_test = load_full()
    order = np.random.default_rng(0).permutation(len(x_train))
    train, val = order[:train_samples], order[train_samples : train_samples + val_samples]
    paths = (work / "train.npz", work / "val.npz", work / "test.npz")
    np.savez(paths[0], x=x_train[train], y=y_train[train])
    np.savez(paths[1], x=x_train[val], y=y_train[val])
    np.savez(paths[2], x=x_test, y=y_test)
    return tuple(str(p) for p in paths)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's settings from the command line (``--quick`` applied), checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TRAINED), help="default: the trained seeds")
    parser.add_argument("--targets", default="50,25", help="FLOPs targets in percent")
    parser.add_argument("--methods", default=",".join((*METHODS, *SCRATCH)))
    parser.add_argument("--paired-seeds", type=int, default=5, help="morphnet and uniform")
    parser.add_argument("--other-seeds", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=10_000)
    parser.add_argument("--val-samples", type=int, default=2_000)
    parser.add_argument(
        "--learn-epochs", type=int, default=2, help="Torch-Pruning's sparse training"
    )
    parser.add_argument(
        "--finetune-epochs", type=int, default=2, help="learn + finetune: every method's total"
    )
    parser.add_argument(
        "--morphnet-learn-epochs", type=int, default=3, help="morphnet's learning, of the total"
    )
    parser.add_argument("--scratch-epochs", type=int, default=4)
    parser.add_argument("--scratch-targets", default="25", help="targets of the scratch test")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--distill-weight", type=float, default=0.5, help="every method's")
    parser.add_argument("--tp-reg", type=float, default=1e-4, help="Torch-Pruning's BN L1 reg")
    parser.add_argument(
        "--width-floor", type=float, default=WIDTH_FLOOR, help="morphnet's (0: free learning)"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes of 1 thread each")
    parser.add_argument("--quick", action="store_true", help="2 models, 25%%, 2+1 seeds, 6k")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--rerun", default="", help="methods whose saved runs are made again (after a change "
        "to their code; scratch-learned follows morphnet), the others kept as without it"
    )  # fmt: skip
    parser.add_argument(
        "--fresh", action="store_true", help="rerun every run (default: keep the runs --out "
        "already holds with the same training settings, and run the rest)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.targets, args.paired_seeds, args.other_seeds = "resnet,vgg", "25", 2, 1
        args.train_samples, args.learn_epochs, args.finetune_epochs = 6_000, 1, 1
        args.morphnet_learn_epochs = 1
        args.scratch_epochs = 2
    unknown = set(filter(None, args.rerun.split(","))) - {*METHODS, *SCRATCH}
    if unknown:
        parser.error(f"--rerun: unknown methods {', '.join(sorted(unknown))}")
    if not 1 <= args.morphnet_learn_epochs < args.learn_epochs + args.finetune_epochs:
        parser.error("--morphnet-learn-epochs must leave at least one epoch of fine-tuning")
    return args


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = [] if args.fresh else _kept_runs(out, args)
    started = time.perf_counter()
    # The work folder persists: a later run's scratch test reads the structures of the
    # morphnet and uniform runs kept from an earlier one.
    work = ROOT / "build" / "quality"
    work.mkdir(parents=True, exist_ok=True)
    data = _data(work, args.train_samples, args.val_samples)
    test_set = dataset(data[2])
    names = dict.fromkeys([*args.models.split(","), *(r["model"] for r in kept)])
    base = {}
    for name in names:
        seed_path = ROOT / "sample_models" / f"{name}_fashion_trained.onnx"
        base[name] = {"flops": flops_of(seed_path), "accuracy": accuracy(seed_path, test_set)}
    results: list[dict] = list(kept)
    context = multiprocessing.get_context("spawn")
    # Longest first (a job's time grows with its seed's FLOPs and its number of methods), so
    # that the last jobs to finish are short ones and no worker idles long at the end.
    jobs = sorted(
        _jobs(args, kept, work, data),
        key=lambda job: -base[job[0].seed_model]["flops"] * len(job[1]),
    )
    with context.Pool(args.workers) as pool:
        for batch in pool.imap_unordered(run_job, jobs):
            results += batch
            _save(out, args, base, results, time.perf_counter() - started)
    rows = summarise(results, base)
    render(rows, base)
    _save(out, args, base, results, time.perf_counter() - started, rows)


def _jobs(
    args: argparse.Namespace, kept: list[dict], work: Path, data: tuple[str, str, str]
) -> list[tuple[Setting, tuple[str, ...], int]]:
    """One job per (model, target, seed): the methods that run at that seed and are not
    kept from an earlier run, in order (the scratch test reads the structures of the
    morphnet and uniform runs)."""
    done = {(r["model"], r["target"], r["seed"], r["method"]) for r in kept}
    methods = args.methods.split(",")
    jobs = []
    for name in args.models.split(","):
        for target in (int(t) for t in args.targets.split(",")):
            scratch = str(target) in args.scratch_targets.split(",")
            for seed in range(args.paired_seeds):
                mine = [
                    m for m in methods
                    if (seed < args.other_seeds or m in ("morphnet", "uniform"))
                    and (scratch or m not in SCRATCH)
                    and (name, target, seed, m) not in done
                ]  # fmt: skip
                if not mine:
                    continue
                setting = Setting(
                    name, target, seed, str(work), *data, args.learn_epochs,
                    args.finetune_epochs, args.scratch_epochs, args.batch_size, args.lr,
                    args.distill_weight, args.tp_reg, args.width_floor,
                    args.morphnet_learn_epochs,
                )  # fmt: skip
                jobs.append((setting, tuple(mine), 1))
    return jobs


# Settings every run depends on: runs saved under other values are not kept.
SHARED_SETTINGS = ("train_samples", "val_samples", "batch_size", "lr", "distill_weight")


def _kept_runs(out: Path, args: argparse.Namespace) -> list[dict]:
    """The runs ``out`` already holds that this invocation would repeat: the same shared
    settings, and the same recipe (``quality_methods.recipe``: a uniform run holds for any
    split of the epochs, a morphnet run for its own split and width floor). A scratch-learned
    run is kept only with the morphnet run whose structure it trained."""
    if not out.exists():
        return []
    doc = json.loads(out.read_text())
    saved = doc.get("settings", {})
    if any(saved.get(k) != getattr(args, k) for k in SHARED_SETTINGS):
        return []

    # Runs saved before runs recorded their recipe were made with the file's settings, and
    # MorphNet with --learn-epochs; a morphnet run among them records its --width-floor
    # (none: it learned freely, before the option).
    legacy = {"morphnet_learn_epochs": saved.get("learn_epochs"), "width_floor": 0.0, **saved}

    def same(run: dict) -> bool:
        made = run.get("recipe")
        if made is None:
            floor = run.get("width_floor", 0.0) if run["method"] == "morphnet" else None
            own = {} if floor is None else {"width_floor": floor}
            made = recipe(run["method"], argparse.Namespace(**{**legacy, **own}))
        return made == recipe(run["method"], args)

    rerun = set(args.rerun.split(","))
    runs = [
        r for r in doc.get("runs", [])
        if (r.get("accuracy") is not None or r["method"] == "onnxsim") and same(r)
        and r["method"] not in rerun
    ]  # fmt: skip
    learned = {(r["model"], r["target"], r["seed"]) for r in runs if r["method"] == "morphnet"}
    return [
        r for r in runs
        if r["method"] != "scratch-learned" or (r["model"], r["target"], r["seed"]) in learned
    ]  # fmt: skip


def _save(out, args, base, results, seconds, rows=None) -> None:
    doc = {
        "settings": vars(args), "cpu_count": os.cpu_count(), "seconds": seconds,
        "seed_models": base, "table": rows or summarise(results, base), "runs": results,
    }  # fmt: skip
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
