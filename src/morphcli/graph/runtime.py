"""onnxruntime sessions, quiet and single-place: every run of a model goes through here."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

# Graph-optimizer chatter (e.g. "cannot remove node") is noise for users: errors only.
ort.set_default_logger_severity(3)


def session(proto: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """A CPU inference session for an in-memory model."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
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
