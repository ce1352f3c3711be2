"""Benchmark: `morphnet analyze` wall time (in process, interpreter start excluded) on
ResNet-50 and on generated conv chains of 250 to 2000 convs; checks growth is linear.

Run: `make bench` or `.venv/bin/python bench/bench_analyze.py`. Saves bench/results/analyze.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from morphcli.cli import main

ROOT = Path(__file__).resolve().parents[1]
RESNET50 = ROOT.parent / "shared" / "real_models" / "onnx_light_resnet50.onnx"
CHAIN_LENGTHS = (250, 500, 1000, 2000)
REPEATS = 5


def conv_chain(n_convs: int, width: int = 16) -> onnx.ModelProto:
    """x -> (conv3x3 + relu) * n_convs -> y, on an 8x8 map."""
    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for i in range(n_convs):
        cin = 3 if i == 0 else width
        w = rng.standard_normal((width, cin, 3, 3)).astype(np.float32) * 0.1
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes,
        f"chain{n_convs}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def time_analyze(path: Path) -> float:
    runner = CliRunner()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = runner.invoke(main, ["analyze", str(path), "--json"])
        times.append(time.perf_counter() - start)
        assert result.exit_code == 0, result.output
    return statistics.median(times)


def main_bench() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("onnx_light_resnet50", RESNET50)]
        for n in CHAIN_LENGTHS:
            path = Path(tmp) / f"chain{n}.onnx"
            onnx.save(conv_chain(n), path)
            cases.append((f"chain of {n} convs", path))
        time_analyze(cases[-1][1])  # warm-up: imports and onnxruntime initialisation
        for name, path in cases:
            nodes = len(onnx.load(path, load_external_data=False).graph.node)
            seconds = time_analyze(path)
            rows.append({"model": name, "nodes": nodes, "seconds": seconds,
                         "us_per_node": seconds / nodes * 1e6})  # fmt: skip
    table = Table(title=f"morphnet analyze --json, median of {REPEATS} (in process)")
    for column in ("model", "nodes", "wall s", "us / node"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(row["model"], str(row["nodes"]), f"{row['seconds']:.3f}",
                      f"{row['us_per_node']:.0f}")  # fmt: skip
    console = Console()
    console.print(table)
    chains = rows[1:]
    growth = chains[-1]["us_per_node"] / chains[0]["us_per_node"]
    console.print(
        f"ResNet-50: {rows[0]['seconds']:.3f} s (goal < 1 s). Per-node time from "
        f"{chains[0]['nodes']} to {chains[-1]['nodes']} nodes grows x{growth:.2f} "
        "(1.0 = linear)."
    )
    out = ROOT / "bench" / "results" / "analyze.json"
    out.write_text(json.dumps({"rows": rows, "per_node_growth": growth}, indent=2) + "\n")


if __name__ == "__main__":
    main_bench()
