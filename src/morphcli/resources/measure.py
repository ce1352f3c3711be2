"""Timing models with onnxruntime: per kernel (profiled runs) and whole-model runs.

Timings on a busy machine drift with its load, so models compared with each other run
round-robin in one process (a profiled and a plain session each, for ``time_models``).
Every figure is a median over runs after warm-up.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnx

from morphcli.errors import MorphError
from morphcli.graph.runtime import Runtime, dummy_inputs, kernel_times, session, with_batch
from morphcli.ops.base import Shape

WARMUP = 2
RUNS = 9
SESSIONS = 3
# Models with more weights than this run in one session each (memory: every session holds
# about twice its model's weights).
BIG_BYTES = 256e6


@dataclass
class Timing:
    """One model's kernel times (median ms per run), the graph onnxruntime ran (structure
    only: large initializers are not read back), and its whole-model median (ms)."""

    kernels: dict[str, float]
    optimized: onnx.ModelProto
    whole_ms: float


def sessions_for(protos: list[onnx.ModelProto]) -> int:
    """SESSIONS plain sessions per model, one where a model is over BIG_BYTES."""
    return 1 if max(p.ByteSize() for p in protos) > BIG_BYTES else SESSIONS


def feeds_for(proto: onnx.ModelProto, input_shapes: dict[str, Shape], batch: int) -> dict:
    """Random inputs at ``batch`` (the analysis shapes have batch 1)."""
    shapes = {name: (batch, *shape[1:]) for name, shape in input_shapes.items()}
    return dummy_inputs(proto, shapes)


def _sessions(protos: list[onnx.ModelProto], runtime: Runtime, path: str, **profiling):
    try:
        return [
            session(with_batch(p, runtime.batch), runtime.threads, runtime.provider, **profiling)
            for p in protos
        ]
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MorphError(
            f"onnxruntime cannot run the model on {runtime}: {first}", file=path
        ) from None


def _run(sess, feeds: dict, path: str, runtime: Runtime) -> float:
    start = time.perf_counter()
    try:
        sess.run(None, feeds)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MorphError(
            f"onnxruntime cannot run the model on {runtime}: {first}", file=path
        ) from None
    return 1000.0 * (time.perf_counter() - start)


def _per_run(times: list[float], runs: int) -> float:
    """A kernel's median time per run after warm-up (a kernel may run several times a run)."""
    per = max(len(times) // (WARMUP + runs), 1)
    kept = np.asarray(times[WARMUP * per :][: runs * per])
    if len(kept) < per:
        return float(np.median(times))
    return float(np.median(kept[: len(kept) // per * per].reshape(-1, per).sum(axis=1)))


def time_models(
    protos: list[onnx.ModelProto],
    runtime: Runtime,
    input_shapes: dict[str, Shape],
    path: str,
    runs: int = RUNS,
) -> list[Timing]:
    """Every model's kernel medians (a profiled session) and whole-model median
    (``sessions_for`` plain sessions by turns, see ``time_interleaved``); all sessions run
    round-robin, so the machine's load drifts over all alike.

    Raises:
        MorphError: onnxruntime cannot run a model on ``runtime`` (exit code 2).
    """
    feeds = feeds_for(protos[0], input_shapes, runtime.batch)
    sessions = sessions_for(protos)
    with tempfile.TemporaryDirectory(prefix="morphcli-latency-") as tmp:
        optimized = [os.path.join(tmp, f"optimized{i}.onnx") for i in range(len(protos))]
        profiled = [
            _sessions(
                [proto], runtime, path, profile_prefix=os.path.join(tmp, f"profile{i}"),
                optimized_path=optimized[i],
            )[0]
            for i, proto in enumerate(protos)
        ]  # fmt: skip
        plain = [_sessions(protos, runtime, path) for _ in range(sessions)]
        whole: list[list[float]] = [[] for _ in protos]
        for i in range(WARMUP + runs):
            for k in range(len(protos)):
                _run(profiled[k], feeds, path, runtime)
                if i < WARMUP:
                    for group in plain:
                        _run(group[k], feeds, path, runtime)
                else:
                    whole[k].append(_run(plain[i % sessions][k], feeds, path, runtime))
        timings = []
        for k, sess in enumerate(profiled):
            times = kernel_times(sess.end_profiling())
            kernels = {name: _per_run(v, runs) for name, v in times.items()}
            structure = onnx.load(optimized[k], load_external_data=False)
            timings.append(Timing(kernels, structure, statistics.median(whole[k])))
    return timings


def time_interleaved(
    protos: list[onnx.ModelProto],
    runtime: Runtime,
    input_shapes: dict[str, Shape],
    path: str,
    min_runs: int,
    budget_s: float,
    max_runs: int = 200,
) -> np.ndarray:
    """[runs, models] whole-model times (ms), the models run round-robin in this process:
    at least ``min_runs`` rounds, more (up to ``max_runs``) while ``budget_s`` seconds last.

    Each model runs in ``sessions_for`` sessions by turns: now and then one session of a
    model runs steadily up to 2x slower than others of the same model (seen on the shared
    development machine, with or without load), and the median over three shrugs off one
    such draw.

    Raises:
        MorphError: onnxruntime cannot run a model on ``runtime`` (exit code 2).
    """
    count = sessions_for(protos)
    sessions = [_sessions(protos, runtime, path) for _ in range(count)]
    feeds = feeds_for(protos[0], input_shapes, runtime.batch)
    for group in sessions:
        for sess in group:
            for _ in range(WARMUP):
                _run(sess, feeds, path, runtime)
    rounds = []
    started = time.perf_counter()
    while len(rounds) < min_runs or (
        len(rounds) < max_runs and time.perf_counter() - started < budget_s
    ):
        group = sessions[len(rounds) % count]
        rounds.append([_run(sess, feeds, path, runtime) for sess in group])
    return np.array(rounds)
