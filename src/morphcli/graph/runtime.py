"""onnxruntime sessions, quiet and single-place: every run of a model goes through here."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper

from morphcli.ops.base import Shape

# onnxruntime logs its own errors, in colour and with the node's raw name, to the process's
# stderr before raising them; we report each error once, as one line. Its log is on
# (warnings and up) with MORPHCLI_DEBUG=1.
LOG_SEVERITY = 1 if os.environ.get("MORPHCLI_DEBUG") else 4
ort.set_default_logger_severity(LOG_SEVERITY)


def session(proto: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """A CPU inference session for an in-memory model."""
    options = ort.SessionOptions()
    options.log_severity_level = LOG_SEVERITY
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def run_model(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run once and return every graph output by name."""
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


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
