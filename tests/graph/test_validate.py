"""What a result must be before it is written: finite weights (a setting the input held as
non-finite aside) and finite outputs on the probe input wherever the input's are finite."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from morphcli.errors import EXIT_BUDGET, MorphError
from morphcli.graph.model import load_model
from morphcli.graph.validate import check_finite_result, weights
from tests.hostile.model_cases import _with_clip
from tests.hostile.models import copy_of, replace_initializer, tiny_model


def _outputs(value: float) -> dict[str, np.ndarray]:
    return {"y": np.array([[0.5, value, 1.0]], np.float32)}


def test_a_result_with_non_finite_weights_is_not_written():
    proto = tiny_model()
    check_finite_result(proto, _outputs(0.0), frozenset(), None, "m.onnx")
    broken = copy_of(proto)
    values = np.zeros((3, 16), np.float32)
    values[1, 2] = np.inf
    replace_initializer(broken, "fc.weight", values)
    with pytest.raises(MorphError, match=r"weight 'fc\.weight' holds NaN or Inf") as caught:
        check_finite_result(broken, _outputs(0.0), frozenset(), None, "m.onnx")
    assert caught.value.exit_code == EXIT_BUDGET
    check_finite_result(broken, _outputs(0.0), frozenset({"fc.weight"}), None, "m.onnx")


def test_outputs_must_be_finite_where_the_input_models_are():
    proto = tiny_model()
    with pytest.raises(MorphError, match="output 'y' is NaN or Inf"):
        check_finite_result(proto, _outputs(np.nan), frozenset(), _outputs(2.0), "m.onnx")
    check_finite_result(proto, _outputs(np.nan), frozenset(), _outputs(np.inf), "m.onnx")


def test_settings_are_not_weights_and_may_stay_non_finite(tmp_path):
    path = tmp_path / "clip.onnx"
    onnx.save(_with_clip(tiny_model()), str(path))
    model = load_model(path, probe=True)
    names = {t.name for t in weights(model.graph)}
    assert {"conv1.weight", "bn2.var", "fc.bias"} <= names
    assert "clip.max" not in names
    assert model.non_finite == {"clip.max"}
    assert np.isfinite(model.reference["y"]).all()
