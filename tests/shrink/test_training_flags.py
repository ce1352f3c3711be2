"""Training flags of ``morphnet shrink``: checked up front (exit 2 with one line), bf16 on a
CPU, and the CUDA paths (fp32, bf16, fp16, --compile; skipped without a GPU)."""

from __future__ import annotations

import json

import pytest
import torch

from morphcli.cli import main
from tests.conftest import SAMPLE_MODELS

TRAINED = SAMPLE_MODELS / "resnet_fashion_trained.onnx"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _short_shrink(cli, fashion, tmp_path, *extra):
    args = [
        "shrink", str(TRAINED), "-o", str(tmp_path / "o.onnx"), "--target-flops", "70%",
        "--data", fashion["labelled"], "--steps", "3", "--batch-size", "32",
        "--finetune-epochs", "1", "--threads", "1", "--json", *extra,
    ]  # fmt: skip
    return cli.invoke(main, args)


def test_fp16_on_cpu_is_exit_2_with_one_line(cli, fashion, tmp_path):
    result = _short_shrink(cli, fashion, tmp_path, "--device", "cpu", "--precision", "fp16")
    assert result.exit_code == 2, result.output
    assert "--precision fp16 needs CUDA" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_shrink_trains_in_bf16_on_cpu(cli, fashion, tmp_path):
    result = _short_shrink(cli, fashion, tmp_path, "--device", "cpu", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["met"] and report["training"]["precision"] == "bf16"
    assert report["throughput"]["round 1 learn"]["images_per_s"] > 0


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_shrink_trains_on_cuda(cli, fashion, tmp_path, precision):
    result = _short_shrink(cli, fashion, tmp_path, "--device", "cuda", "--precision", precision)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["met"] and report["training"]["device"] == "cuda:0"
    assert report["training"]["precision"] == precision


@cuda
def test_shrink_compiles_on_cuda(cli, fashion, tmp_path):
    result = _short_shrink(cli, fashion, tmp_path, "--device", "cuda", "--compile")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["training"]["compile"]


def test_augment_without_an_image_folder_is_exit_2(cli, fashion, tmp_path):
    result = _short_shrink(cli, fashion, tmp_path, "--augment", "crop-flip")
    assert result.exit_code == 2, result.output
    assert "--augment crop-flip augments image folders" in result.stderr
