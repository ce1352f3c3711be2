"""Export the sample networks to ONNX: ``python sample_models/build.py``.

Every sample is built from a fixed seed and exported with a fixed [1, 1, 28, 28] input, opset 17,
input "input" and output "output", so rebuilding gives the same file. BatchNormalization stays a
separate op (morphnet's "gamma" penalty reads its scales), except in ``resnet_folded`` where BN is
merged into the convs (the "group lasso" case).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

try:
    from sample_models.nets import (
        FlattenGemmNet,
        InceptionStyle,
        MobileNetV2Style,
        PlainCNN,
        ResNetStyle,
        UNetStyle,
    )
except ModuleNotFoundError:  # run as `python sample_models/build.py`: repo root not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sample_models.nets import (
        FlattenGemmNet,
        InceptionStyle,
        MobileNetV2Style,
        PlainCNN,
        ResNetStyle,
        UNetStyle,
    )

SAMPLE_DIR = Path(__file__).resolve().parent
INPUT_SHAPE = (1, 1, 28, 28)
OPSET = 17

# sample name -> (network class, fold BN into convs on export)
SAMPLES: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "plain_cnn": (PlainCNN, False),
    "resnet": (ResNetStyle, False),
    "resnet_folded": (ResNetStyle, True),
    "mobilenetv2": (MobileNetV2Style, False),
    "inception": (InceptionStyle, False),
    "unet": (UNetStyle, False),
    "flatten_gemm": (FlattenGemmNet, False),
}


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial scale, shift and running statistics.

    Freshly built BNs are identities (gamma 1, beta 0, mean 0, var 1): a BN bug would go unseen,
    and the exporter would merge equal tensors (gamma with running_var) into one initializer.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def build_net(name: str, seed: int = 0) -> nn.Module:
    """The torch module of sample ``name`` with seeded weights and BN statistics, in eval mode."""
    net_class, _ = SAMPLES[name]
    torch.manual_seed(seed)
    model = net_class()
    randomize_batchnorm(model, seed)
    return model.eval()


def export_onnx(model: nn.Module, path: str | Path, fold_bn: bool = False) -> None:
    """Export ``model`` (eval mode) with the samples' settings and check the file.

    The legacy TorchScript exporter (``dynamo=False``) folds eval-mode BN into the preceding conv
    only as part of constant folding, so ``do_constant_folding=False`` keeps BN as its own op.
    """
    model.eval()
    dummy = torch.zeros(INPUT_SHAPE)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated; it is used on purpose (see the docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            do_constant_folding=fold_bn,
        )
    proto = onnx.load(str(path))
    unshare_initializers(proto)
    onnx.save(proto, str(path))
    check_export(model, path, fold_bn)


def unshare_initializers(proto: onnx.ModelProto) -> None:
    """Give every parameter its own initializer again, in place.

    The exporter stores equal tensors once and feeds the other users through an Identity node.
    That happens in trained ResNets: the BN shifts of a block's last conv and of its projection
    shortcut get the same gradient (they meet at one Add), so they stay equal. Copying the tensor
    under the Identity's output name keeps one initializer per torch parameter.
    """
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def check_export(model: nn.Module, path: str | Path, fold_bn: bool) -> None:
    """Fail unless the ONNX file is valid, has BN exactly when unfolded, and matches torch."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    op_types = [node.op_type for node in proto.graph.node]
    has_bn_module = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_bn = op_types.count("BatchNormalization")
    if (n_bn > 0) != (has_bn_module and not fold_bn):
        raise RuntimeError(f"{path}: {n_bn} BatchNormalization nodes with fold_bn={fold_bn}")
    x = torch.rand(INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    diff = float(np.abs(got - expected).max())
    if diff >= 1e-4:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {diff:.2e}")


def export_sample(name: str, path: str | Path, seed: int = 0) -> None:
    """Build sample ``name`` (a key of SAMPLES) from ``seed`` and export it to ``path``."""
    export_onnx(build_net(name, seed), path, fold_bn=SAMPLES[name][1])


def main() -> None:
    """Export every sample to sample_models/<name>.onnx."""
    for name in SAMPLES:
        path = SAMPLE_DIR / f"{name}.onnx"
        export_sample(name, path)
        print(f"wrote {path.relative_to(SAMPLE_DIR.parent)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
