"""``--calibrate DATA``: re-estimate BatchNormalization statistics after surgery.

Removing or replicating channels changes what every following channel sums over, so the
running statistics the model was trained with no longer fit it; a few hundred inputs (labels
are not used) are enough to estimate them again. The data is read and checked against the
model's input before any surgery runs.
"""

from __future__ import annotations

import onnx
from torch.utils.data import Dataset

from morphcli.errors import MorphError
from morphcli.graph.model import Model, load_model
from morphcli.learn.data import ImageOptions, check_fits, read_source
from morphcli.learn.train import recalibrate
from morphcli.learn.wrapper import OnnxModule

BATCH_SIZE = 64


class Calibration:
    """Re-estimates a resized model's BN statistics on ``dataset`` (call it on the model).

    Build it with ``Calibration.prepare`` (which checks the data up front).
    """

    def __init__(self, dataset: Dataset, spec: str, seed: int = 0) -> None:
        self.dataset = dataset
        self.spec = spec
        self.seed = seed

    @classmethod
    def prepare(
        cls, model_path: str, spec: str, input_shapes: dict[str, list[int]] | None, seed: int = 0
    ) -> Calibration:
        """Read ``spec`` (an .npz, an image folder or module:function) for the model's input.

        Raises:
            MorphError: the model has several inputs, or the data does not fit it.
        """
        model = load_model(model_path, input_shapes)
        if len(model.input_shapes) != 1:
            raise MorphError(
                f"--calibrate feeds one input; the model has {len(model.input_shapes)}",
                file=model_path,
            )
        (shape,) = model.input_shapes.values()
        images = ImageOptions(channels=shape[1], size=tuple(shape[2:4]))
        dataset, _ = read_source(spec, images)
        check_fits(dataset, tuple(shape[1:]), f"--calibrate {spec}")
        return cls(dataset, spec, seed)

    def __call__(self, model: Model) -> onnx.ModelProto:
        module = OnnxModule.from_onnx(model)
        recalibrate(module, self.dataset, BATCH_SIZE, "cpu", self.seed)
        return module.to_onnx()
