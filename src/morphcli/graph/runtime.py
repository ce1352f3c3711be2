"""onnxruntime sessions, quiet and single-place: every run of a model goes through here.

Sessions run on an execution provider with a number of intra-op threads (``Runtime``); a
profiled session also records how long each kernel onnxruntime runs took (``kernel_times``)
and can write the graph it actually executes (after fusions and layout changes), which is
what the latency measurements read.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper

from morphcli.errors import MorphError
from morphcli.ops.base import Shape

# onnxruntime logs its own errors, in colour and with the node's raw name, to the process's
# stderr before raising them; we report each error once, as one line. Its log is on
# (warnings and up) with MORPHCLI_DEBUG=1.
LOG_SEVERITY = 1 if os.environ.get("MORPHCLI_DEBUG") else 4
ort.set_default_logger_severity(LOG_SEVERITY)

CPU = "CPUExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": "CUDAExecutionProvider"}
_KERNEL_SUFFIX = "_kernel_time"
# Initializers at least this large go to a side file when the optimized graph is written:
# only the graph's structure is read back.
_EXTERNAL_MIN_BYTES = 1024


@dataclass(frozen=True)
class Runtime:
    """Where a model runs: the execution provider, intra-op threads (0: onnxruntime's default)
    and the batch size of its inputs."""

    provider: str = CPU
    threads: int = 0
    batch: int = 1

    def __str__(self) -> str:
        threads = "default threads" if not self.threads else f"{self.threads} thread(s)"
        return f"{self.provider}, {threads}, batch {self.batch}"


def resolve_provider(name: str) -> str:
    """An execution provider's full name (``cpu``, ``cuda`` or a name onnxruntime lists).

    Raises:
        MorphError: the provider is not available in this onnxruntime build (exit code 2).
    """
    full = PROVIDER_ALIASES.get(name.lower(), name)
    available = ort.get_available_providers()
    if full not in available:
        raise MorphError(f"bad --provider {name!r}: this onnxruntime offers {', '.join(available)}")
    return full


def session(
    proto: onnx.ModelProto,
    threads: int = 0,
    provider: str = CPU,
    *,
    profile_prefix: str | None = None,
    optimized_path: str | None = None,
) -> ort.InferenceSession:
    """An inference session for an in-memory model.

    Args:
        proto: The model.
        threads: Intra-op threads; 0 leaves onnxruntime's default. Defaults to 0.
        provider: The execution provider (CPU is the fallback for ops it lacks). Defaults to CPU.
        profile_prefix: Record every kernel's run time into a profile file with this prefix
            (``end_profiling()`` writes it; read it with ``kernel_times``). Defaults to None.
        optimized_path: Write the graph onnxruntime executes here (its large initializers to
            a side file). Defaults to None.
    """
    options = ort.SessionOptions()
    options.log_severity_level = LOG_SEVERITY
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
        side = os.path.basename(optimized_path) + ".data"
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", side
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(_EXTERNAL_MIN_BYTES),
        )
    providers = [provider] if provider == CPU else [provider, CPU]
    return ort.InferenceSession(proto.SerializeToString(), options, providers=providers)


def kernel_times(profile_path: str) -> dict[str, list[float]]:
    """Per kernel (a node of the graph onnxruntime executes), its run times in ms, in order."""
    with open(profile_path, encoding="utf-8") as stream:
        events = json.load(stream)
    times: dict[str, list[float]] = defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith(_KERNEL_SUFFIX):
            times[name[: -len(_KERNEL_SUFFIX)]].append(float(event["dur"]) / 1000.0)
    return dict(times)


def run_model(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run once and return every graph output by name."""
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def with_batch(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """The model with batch ``batch`` on every graph input and output (itself for 1).

    The batch is a fixed dim, not a symbolic one: with static shapes onnxruntime plans its
    memory once, as it does for the batch-1 model, instead of allocating on every run.
    """
    if batch == 1:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for value in [*out.graph.input, *out.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch
    del out.graph.value_info[:]
    return out


def quiet_graphsurgeon() -> None:
    """graphsurgeon logs hints to stdout, which must stay clean for ``--json``."""
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL


def dummy_inputs(
    proto: onnx.ModelProto, shapes: dict[str, Shape], seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs of the given shapes and the declared dtypes (ints are small and >= 0)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in proto.graph.initializer}
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = shapes[value.name]
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds
