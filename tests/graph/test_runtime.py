"""onnxruntime sessions: providers by name, batch sizes, and bad providers as exit 2."""

from __future__ import annotations

import numpy as np
import pytest

from morphcli.errors import MorphError
from morphcli.graph.model import load_model
from morphcli.graph.runtime import CPU, resolve_provider, session, with_batch
from morphcli.resources.measure import feeds_for
from tests.conftest import SAMPLE_MODELS


def test_providers_resolve_by_short_or_full_name():
    assert resolve_provider("cpu") == CPU == resolve_provider("CPUExecutionProvider")
    with pytest.raises(MorphError, match="bad --provider 'warp-drive'"):
        resolve_provider("warp-drive")


def test_a_model_runs_at_another_batch_size():
    model = load_model(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
    proto = model.to_proto()
    assert with_batch(proto, 1) is proto
    batched = with_batch(proto, 3)
    feeds = feeds_for(batched, model.input_shapes, 3)
    (out,) = session(batched, threads=1).run(None, feeds)
    assert out.shape == (3, 10)
    single = session(proto, threads=1).run(None, {k: v[:1] for k, v in feeds.items()})[0]
    np.testing.assert_allclose(out[:1], single, rtol=1e-4, atol=1e-5)
