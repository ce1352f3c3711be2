"""Benchmark: onnxruntime CPU latency of slimmed models, and morphcli's latency model.

(Over 300 lines: one script, three parts that share the model list, the timing and the
tables; each part is a function.)

Parts (``--parts``, default all):

- ``ratio``: latency before and after ``prune --ratio 0.5`` next to the FLOP ratio, at batch
  1 and 32, for every sample and real model. A model is "conv-heavy" when at least 90% of
  its FLOPs are in dense convolutions and matrix products: there the goal is a latency ratio
  within 10% of the FLOP ratio. Saves ``latency.json`` (``latency_round<N>.json`` with
  ``--round-to N``).
- ``model``: the latency model of every model (measured here, into a fresh cache), and its
  prediction error on HELD_OUT width configurations it never saw: predicted whole-model
  latency relative to the full model's against the measured ratio (the held-out variants and
  the full model timed round-robin), next to the model's own check (absolute, measured with
  the fit). Goal: median error within 10%. Saves ``latency_model.json``.
- ``target``: on TARGET_MODELS, ``prune --target-latency 50%`` as measured (goal: within
  [0.90, 1.0] x the target), next to ``prune --target-flops`` tuned (secant on the FLOPs
  share, measuring each result) to the same measured latency, and the FLOPs each keeps.
  Saves ``latency_target.json``.

Every latency is a median of runs in this process, the models compared running round-robin so
that a change in machine load hits all of them. onnxruntime runs one intra-op thread by
default (``--threads``): on a shared machine that is what gives repeatable medians.

Run: `.venv/bin/python bench/bench_latency.py [--parts ratio model target] [--models NAME ...]
[--threads N] [--round-to N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from morphcli.errors import MorphError
from morphcli.graph.builder import build_channel_graph
from morphcli.graph.load import read_proto
from morphcli.graph.model import Model, load_model, model_from_proto
from morphcli.graph.runtime import Runtime
from morphcli.resources.cost import build_cost_model
from morphcli.resources.measure import BIG_BYTES, time_interleaved
from morphcli.surgery.apply import apply_copies
from morphcli.surgery.importance import class_importance
from morphcli.surgery.latency import LatencySetup, latency_model, variant, width_configs
from morphcli.surgery.latency_target import compare
from morphcli.surgery.prune import ratio_copies, run_prune

ROOT = Path(__file__).resolve().parents[1]
REAL_MODELS = ROOT.parent / "shared" / "real_models"
RESULTS = ROOT / "bench" / "results"
INPUT_SHAPES = {"ppocr_mobile_v2.0_cls.onnx": {"x": [1, 3, 48, 192]}}
RATIO = 0.5
BATCHES = (1, 32)
CONV_HEAVY_SHARE = 0.9
MIN_RUNS = 5
# Batch-32 runs above this many FLOPs per run are skipped (minutes each on a small CPU).
MAX_FLOPS_PER_RUN = 60e9
HELD_OUT = 10
# YOLOX-nano, the UNet, three with depthwise convs (PAN/MobileNetV3, the PaddleOCR
# MobileNetV3, the RFB face detector) and a plain ResNet-50.
TARGET_MODELS = (
    "yolox_nano.onnx", "unet_sasekazu.onnx", "pan_mobilenetv3_small.onnx",
    "ppocr_mobile_v2.0_cls.onnx", "ultraface_RFB-320.onnx", "onnx_light_resnet50.onnx",
    "fastestdet.onnx", "yunet_n_320_320.onnx", "onnx_light_inception_v1.onnx",
    "onnx_light_squeezenet.onnx",
)  # fmt: skip
LATENCY_TARGET = 0.5
TUNE_STEPS = 5
TUNE_TOLERANCE = 0.02


def dense_share(model: Model) -> float:
    """Fraction of FLOPs in convs with group 1, ConvTranspose, Gemm and MatMul."""
    cg = build_channel_graph(model)
    per_node = build_cost_model(model, cg).flop_table.by_node(cg.widths().astype(float))
    total = sum(per_node.values()) or 1.0
    dense = sum(
        per_node.get(n.name, 0.0)
        for n in model.graph.nodes
        if n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and int(n.attrs.get("group", 1)) == 1
    )
    return dense / total


def flops_of(model: Model) -> float:
    return build_cost_model(model, build_channel_graph(model)).flops()


def bench_ratio(path: Path, args) -> dict:
    model = load_model(path, INPUT_SHAPES.get(path.name))
    cg = build_channel_graph(model)
    before = flops_of(model)
    copies = ratio_copies(cg, class_importance(model, cg), RATIO, args.round_to)
    pruned = apply_copies(model, cg, copies)
    after = flops_of(model_from_proto(pruned, "pruned", model.input_shapes))
    share = dense_share(model)
    entry = {
        "model": path.name, "dense_flop_share": round(share, 3),
        "conv_heavy": share >= CONV_HEAVY_SHARE, "flops_before": round(before),
        "flops_after": round(after), "flop_ratio": after / before,
    }  # fmt: skip
    for batch in BATCHES:
        key = f"batch{batch}"
        if before * batch > MAX_FLOPS_PER_RUN:
            entry[key] = {"skipped": f"{before * batch / 1e9:.0f} GFLOPs per run"}
            continue
        runtime = Runtime(threads=args.threads, batch=batch)
        try:
            times = time_interleaved(
                [model.to_proto(), pruned], runtime, model.input_shapes, str(path), MIN_RUNS,
                args.budget, max_runs=50,
            )  # fmt: skip
        except MorphError as error:  # a graph that fixes batch 1 (Reshape targets...)
            entry[key] = {"skipped": str(error).split(": ", 2)[-1][:120]}
            continue
        old, new = np.median(times, axis=0)
        entry[key] = {
            "before_ms": old, "after_ms": new, "latency_ratio": new / old, "runs": len(times),
            "vs_flop_ratio": new / old / entry["flop_ratio"] - 1.0,
        }  # fmt: skip
    return entry


def render_ratio(results: list[dict], console: Console, args) -> None:
    title = f"prune --ratio {RATIO} --round-to {args.round_to}: onnxruntime CPU latency"
    table = Table(title=f"{title}, {args.threads or 'default'} thread(s)", title_justify="left")
    for name in ("model", "dense", "FLOP ratio"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for batch in BATCHES:
        table.add_column(f"b{batch} ms before>after", justify="right")
        table.add_column(f"b{batch} lat. ratio", justify="right")
    for entry in results:
        row = [
            entry["model"] + (" *" if entry["conv_heavy"] else ""),
            f"{entry['dense_flop_share']:.2f}",
            f"{entry['flop_ratio']:.3f}",
        ]
        for batch in BATCHES:
            cell = entry[f"batch{batch}"]
            if "skipped" in cell:
                row += ["skipped", "-"]
            else:
                row += [
                    f"{cell['before_ms']:.2f}>{cell['after_ms']:.2f}",
                    f"{cell['latency_ratio']:.3f} ({cell['vs_flop_ratio']:+.0%})",
                ]
        table.add_row(*row)
    console.print(table)
    console.print(
        "* conv-heavy (>= 90% of FLOPs in dense convs/matmuls): goal is a latency ratio within "
        "10% of the FLOP ratio; (+x%) is latency ratio / FLOP ratio - 1."
    )


def bench_model(path: Path, setup: LatencySetup) -> dict:
    """The latency model and its error on HELD_OUT fresh width configurations: predicted
    latency relative to the full model's against measured relative to the full model's, all
    timed round-robin later (the machine's speed drifts between then and the fit; a share
    target, ``50%``, depends on these ratios)."""
    model = load_model(path, INPUT_SHAPES.get(path.name))
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    latency = latency_model(model, cg, cm, setup)
    resource = latency.bind(model, cg, cm)
    configs = width_configs(cg, HELD_OUT, seed=12345)
    full = model.to_proto()
    # all variants next to the full model at once; a large model one variant at a time
    groups = [[k] for k in range(HELD_OUT)] if full.ByteSize() > BIG_BYTES else [range(HELD_OUT)]
    ratios = np.zeros(HELD_OUT)
    for group in groups:
        protos = [full, *(variant(model, cg, configs[k], k) for k in group)]
        times = np.median(
            time_interleaved(protos, setup.runtime, model.input_shapes, str(path), MIN_RUNS, 0.0),
            axis=0,
        )
        ratios[list(group)] = times[1:] / times[0]
    at_full = resource.value(cg.widths().astype(float))
    predicted = np.array([resource.value(w.astype(float)) for w in configs]) / at_full
    errors = predicted / ratios - 1.0
    return {
        "model": path.name, "units": len(latency.units), "measured_ms": latency.measured_ms,
        "held_out": HELD_OUT, "median_abs_error": float(np.median(np.abs(errors))),
        "max_abs_error": float(np.max(np.abs(errors))), "errors": errors.round(4).tolist(),
        "own_check": latency.check,
    }  # fmt: skip


def render_model(results: list[dict], console: Console) -> None:
    table = Table(
        title=f"Latency model: error on {HELD_OUT} held-out width configurations (latency "
        "relative to the full model's); own check: absolute, at the fit", title_justify="left",
    )  # fmt: skip
    for name in ("model", "units", "ms (full)", "median |error|", "max |error|", "own check"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for entry in results:
        own = entry["own_check"]
        table.add_row(
            entry["model"], str(entry["units"]), f"{entry['measured_ms']:.2f}",
            f"{entry['median_abs_error']:.1%}", f"{entry['max_abs_error']:.1%}",
            f"{own['median_abs_error']:.1%} / {own['max_abs_error']:.1%}",
        )  # fmt: skip
    console.print(table)
    errors = [e["median_abs_error"] for e in results]
    console.print(f"median of the per-model medians: {np.median(errors):.1%} (goal: within 10%)")


def _prune_flops(path: Path, out: Path, share: float, reference, model, setup) -> tuple:
    """prune --target-flops share: the result's measured latency ratio and FLOPs kept."""
    doc = run_prune(str(path), str(out), input_shapes=INPUT_SHAPES.get(path.name),
                    target=("flops", f"{100 * share:.4f}%"))  # fmt: skip
    measured = compare(reference, read_proto(out), model, setup)
    return measured.ratio, doc["after"]["flops"] / doc["before"]["flops"]


def tune_share(
    run, goal: float, start: float, steps: int = TUNE_STEPS, low: float = 0.01
) -> tuple[dict, list]:
    """The FLOPs share (at least ``low``) whose result's measured latency ratio is closest to
    ``goal``: a secant on log(share) -> log(ratio) from ``start``; ``run(share)`` returns
    (ratio, FLOPs kept). Returns the best try and all tries."""
    tries: list[dict] = []
    share = start
    for _ in range(steps):
        ratio, kept = run(share)
        tries.append({"share": share, "ratio": ratio, "flops_kept": kept})
        if abs(ratio / goal - 1) <= TUNE_TOLERANCE:
            break
        slope = 0.7  # latency grows slower than FLOPs on these models
        if len(tries) > 1 and tries[-1]["share"] != tries[-2]["share"]:
            a, b = tries[-2], tries[-1]
            found = np.log(b["ratio"] / a["ratio"]) / np.log(b["share"] / a["share"])
            slope = float(np.clip(found, 0.2, 2.0)) if np.isfinite(found) else slope
        share = float(np.clip(share * (goal / ratio) ** (1 / slope), low, 1.0))
    return min(tries, key=lambda t: abs(t["ratio"] / goal - 1)), tries


def bench_target(path: Path, setup: LatencySetup, work: Path) -> dict:
    """prune --target-latency 50%, and prune --target-flops tuned to its measured latency."""
    model = load_model(path, INPUT_SHAPES.get(path.name))
    reference = model.to_proto()
    latency_out = work / f"latency_{path.name}"
    target = ("latency", f"{100 * LATENCY_TARGET:g}%")
    try:
        doc = run_prune(str(path), str(latency_out), input_shapes=INPUT_SHAPES.get(path.name),
                        target=target, latency=setup)  # fmt: skip
    except MorphError as error:  # exit 1: the latency model says no width reaches it
        return {"model": path.name, "unreachable": error.message}
    section = doc["latency"]
    flops_kept = doc["after"]["flops"] / doc["before"]["flops"]
    flops_out = work / f"flops_{path.name}"

    def run(share: float) -> tuple[float, float]:
        return _prune_flops(path, flops_out, share, reference, model, setup)

    best, tries = tune_share(run, section["measured_ratio"], flops_kept)
    _prune_flops(path, flops_out, best["share"], reference, model, setup)
    head = compare(read_proto(flops_out), read_proto(latency_out), model, setup)
    return {
        "model": path.name, "latency": section, "latency_flops_kept": flops_kept,
        "flops_tuned": best, "tries": tries,
        "latency_vs_flops_result": {"ratio": head.ratio, "interval": list(head.interval)},
    }  # fmt: skip


def render_target(results: list[dict], console: Console) -> None:
    table = Table(
        title=f"prune --target-latency {LATENCY_TARGET:.0%} vs prune --target-flops tuned to "
        "the same measured latency", title_justify="left",
    )  # fmt: skip
    columns = ("model", "lat. ratio", "of target", "in band", "FLOPs kept", "FLOPs-tuned ratio",
               "FLOPs kept", "lat./flops-tuned ms")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="left" if name == "model" else "right")
    for e in results:
        if "unreachable" in e:
            table.add_row(e["model"], "unreachable", "-", "NO", *["-"] * 4)
            continue
        s, tuned, head = e["latency"], e["flops_tuned"], e["latency_vs_flops_result"]
        low, high = head["interval"]
        table.add_row(
            e["model"], f"{s['measured_ratio']:.3f}", f"{s['fraction_of_target']:.3f}",
            "yes" if s["met"] else "NO", f"{e['latency_flops_kept']:.3f}",
            f"{tuned['ratio']:.3f}", f"{tuned['flops_kept']:.3f}",
            f"{head['ratio']:.3f} ({low:.3f}-{high:.3f})",
        )  # fmt: skip
    console.print(table)
    console.print(
        "lat. ratio: measured latency / the input's; of target: / 0.5; FLOPs kept: / the input's; "
        "last column: latency-targeted / FLOPs-tuned result, measured head to head (95% interval)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="*", default=["ratio", "model", "target"])
    parser.add_argument("--models", nargs="*", help="File names to run (default: all).")
    parser.add_argument("--budget", type=float, default=2.0, help="Seconds per measurement.")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads.")
    parser.add_argument("--round-to", type=int, default=1, help="Pruned widths' multiple.")
    args = parser.parse_args()
    paths = sorted((ROOT / "sample_models").glob("*.onnx")) + sorted(REAL_MODELS.glob("*.onnx"))
    if args.models:
        paths = [p for p in paths if p.name in args.models or p.stem in args.models]
    console = Console(width=150)
    conditions = {
        "threads": args.threads, "cpu_count": os.cpu_count(), "onnxruntime": ort.__version__,
        "numpy": np.__version__, "load_average": os.getloadavg(),
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        setup = LatencySetup(Runtime(threads=args.threads), str(Path(folder) / "cache"),
                             note=lambda text: console.print(f"[dim]{text}[/dim]"))  # fmt: skip
        if "ratio" in args.parts:
            results = []
            for path in paths:
                console.print(f"[dim]ratio: {path.name}...[/dim]")
                results.append(bench_ratio(path, args))
            render_ratio(results, console, args)
            name = "latency.json" if args.round_to == 1 else f"latency_round{args.round_to}.json"
            doc = {"ratio": RATIO, "round_to": args.round_to, **conditions, "models": results}
            save(name, doc, console)
        if "model" in args.parts:
            results = []
            for path in paths:
                console.print(f"[dim]latency model: {path.name}...[/dim]")
                results.append(bench_model(path, setup))
            render_model(results, console)
            save("latency_model.json", {**conditions, "models": results}, console)
        if "target" in args.parts:
            results = []
            for path in (p for p in paths if p.name in TARGET_MODELS):
                console.print(f"[dim]latency target: {path.name}...[/dim]")
                results.append(bench_target(path, setup, Path(folder)))
            render_target(results, console)
            save("latency_target.json", {**conditions, "models": results}, console)


def save(name: str, doc: dict, console: Console) -> None:
    path = RESULTS / name
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    console.print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
