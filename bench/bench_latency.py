"""Benchmark: onnxruntime CPU latency before and after `morphnet prune --ratio 0.5`, next to
the FLOP ratio, for every sample model and every real model.

Batch 1 and batch 32 (the batch dim made symbolic; a model whose graph fixes batch 1, e.g.
in a Reshape target, reports why batch 32 did not run). Each latency is the median of
repeated runs in this process, the original and the pruned model alternating so that a
change in machine load hits both. A model is "conv-heavy" when at least 90% of its FLOPs are
in dense convolutions and matrix products (no depthwise or grouped convs): there the goal is
a latency ratio within 10% of the FLOP ratio.

onnxruntime runs single-threaded by default (``--threads 0``: its own default): on a shared
machine that is what gives repeatable medians.

Run: `.venv/bin/python bench/bench_latency.py [--models NAME ...] [--budget S] [--threads N]
[--round-to N]`. Saves bench/results/latency.json (latency_round<N>.json with --round-to N).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import Model, load_model, model_from_proto
from morphcli.graph.runtime import dummy_inputs
from morphcli.resources.cost import build_cost_model
from morphcli.surgery.apply import apply_copies
from morphcli.surgery.importance import class_importance
from morphcli.surgery.prune import ratio_copies

ROOT = Path(__file__).resolve().parents[1]
REAL_MODELS = ROOT.parent / "shared" / "real_models"
RESULTS = ROOT / "bench" / "results"
INPUT_SHAPES = {"ppocr_mobile_v2.0_cls.onnx": {"x": [1, 3, 48, 192]}}
RATIO = 0.5
BATCHES = (1, 32)
CONV_HEAVY_SHARE = 0.9
MIN_RUNS, MAX_RUNS = 5, 50
# Batch-32 runs above this many FLOPs per run are skipped (minutes each on a small CPU).
MAX_FLOPS_PER_RUN = 60e9


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


def with_batch(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """The model with a symbolic batch dim on every graph input and output."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for value in [*out.graph.input, *out.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and batch != 1:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del out.graph.value_info[:]
    return out


def session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4  # a batch-1-only graph fails loudly: the table says why
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def measure(
    protos: list[onnx.ModelProto], shapes: dict[str, tuple[int, ...]], budget: float, threads: int
) -> list[dict]:
    """Median latency (ms) of each model, runs alternating between the models."""
    sessions = [session(p, threads) for p in protos]
    feeds = dummy_inputs(protos[0], shapes)
    for sess in sessions:
        sess.run(None, feeds)  # warm-up: first-run allocations
    times: list[list[float]] = [[] for _ in sessions]
    started = time.perf_counter()
    while True:
        for sess, samples in zip(sessions, times, strict=True):
            start = time.perf_counter()
            sess.run(None, feeds)
            samples.append(time.perf_counter() - start)
        runs = len(times[0])
        if runs >= MAX_RUNS or (runs >= MIN_RUNS and time.perf_counter() - started > budget):
            break
    return [{"ms": 1000 * statistics.median(t), "runs": len(t)} for t in times]


def bench_model(path: Path, budget: float, threads: int, round_to: int) -> dict:
    model = load_model(path, INPUT_SHAPES.get(path.name))
    cg = build_channel_graph(model)
    before = build_cost_model(model, cg).flops()
    copies = ratio_copies(cg, class_importance(model, cg), RATIO, round_to)
    pruned = apply_copies(model, cg, copies)
    result = model_from_proto(pruned, "pruned", model.input_shapes)
    after = build_cost_model(result, build_channel_graph(result)).flops()
    entry = {
        "model": path.name,
        "dense_flop_share": round(dense_share(model), 3),
        "conv_heavy": dense_share(model) >= CONV_HEAVY_SHARE,
        "flops_before": round(before),
        "flops_after": round(after),
        "flop_ratio": after / before,
    }
    original = model.to_proto()
    for batch in BATCHES:
        key = f"batch{batch}"
        if before * batch > MAX_FLOPS_PER_RUN:
            entry[key] = {"skipped": f"{before * batch / 1e9:.0f} GFLOPs per run"}
            continue
        shapes = {n: (batch, *s[1:]) for n, s in model.input_shapes.items()}
        try:
            old, new = measure(
                [with_batch(original, batch), with_batch(pruned, batch)], shapes, budget, threads
            )
        except Exception as error:  # a graph that fixes batch 1 (Reshape targets...)
            entry[key] = {"skipped": str(error).strip().splitlines()[0][:120]}
            continue
        ratio = new["ms"] / old["ms"]
        entry[key] = {
            "before_ms": old["ms"],
            "after_ms": new["ms"],
            "latency_ratio": ratio,
            "runs": old["runs"],
            "vs_flop_ratio": ratio / entry["flop_ratio"] - 1.0,
        }
    return entry


def render(results: list[dict], console: Console, threads: int, round_to: int) -> None:
    title = f"prune --ratio {RATIO} --round-to {round_to}: onnxruntime CPU latency"
    table = Table(title=f"{title}, {threads or 'default'} thread(s)", title_justify="left")
    table.add_column("model", overflow="fold", max_width=24)
    table.add_column("dense", justify="right")
    table.add_column("FLOP ratio", justify="right")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="File names to run (default: all).")
    parser.add_argument("--budget", type=float, default=2.0, help="Seconds per measurement.")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads.")
    parser.add_argument("--round-to", type=int, default=1, help="Pruned widths' multiple.")
    args = parser.parse_args()
    paths = sorted((ROOT / "sample_models").glob("*.onnx")) + sorted(REAL_MODELS.glob("*.onnx"))
    if args.models:
        paths = [p for p in paths if p.name in args.models or p.stem in args.models]
    console = Console(width=140)
    results = []
    for path in paths:
        console.print(f"[dim]{path.name}...[/dim]")
        results.append(bench_model(path, args.budget, args.threads, args.round_to))
    render(results, console, args.threads, args.round_to)
    name = "latency.json" if args.round_to == 1 else f"latency_round{args.round_to}.json"
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "ratio": RATIO,
        "round_to": args.round_to,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "models": results,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
