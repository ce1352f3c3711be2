"""The process world: one process without torchrun, the environment checked, and the
multi-process checks (collectives, synchronised BN, batch sharing, DDP training equal to one
process) run under ``torchrun --nproc-per-node 2`` with gloo."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from morphcli.errors import MorphError
from morphcli.learn.distributed import World, start_world, structure_digest
from morphcli.learn.loading import local_batch_size
from morphcli.learn.penalty import MorphNetPenalty
from morphcli.learn.wrapper import OnnxModule
from tests.conftest import SAMPLE_MODELS, torchrun


def test_multi_process_checks_pass_under_torchrun():
    result = torchrun("tests/learn/distributed_checks.py")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rank 0: 5 checks passed" in result.stderr
    assert "rank 1: 5 checks passed" in result.stderr


def test_without_torchrun_the_world_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    world = start_world("cpu")
    assert (world.rank, world.size, world.main, world.device) == (0, 1, True, "cpu")
    assert world.mean([1.0, 2.0]).tolist() == [1.0, 2.0]
    assert world.from_main(lambda: "read") == "read"
    world.check_identical("anything", "digest")
    module = object()
    assert world.wrap(module) is module


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        (
            {"WORLD_SIZE": "2", "RANK": "0"},
            "MASTER_ADDR, MASTER_PORT not set: launch with torchrun",
        ),
        (
            {"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
            "RANK=2 / LOCAL_RANK=0 outside a world of 2",
        ),
    ],
)
def test_a_broken_launch_environment_is_a_clear_error(monkeypatch, env, message):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MorphError, match=message):
        start_world("cpu")


def test_the_global_batch_must_split_evenly():
    assert local_batch_size(64, World(rank=1, size=4)) == 16
    with pytest.raises(MorphError, match=r"--batch-size 64 .* over 3 processes: use a multiple"):
        local_batch_size(64, World(rank=0, size=3))


def test_the_structure_digest_ignores_weights_but_not_shapes():
    model = onnx.load(SAMPLE_MODELS / "plain_cnn.onnx")
    digest = structure_digest(model)
    weights = onnx.load(SAMPLE_MODELS / "plain_cnn.onnx")
    first = weights.graph.initializer[0]
    values = onnx.numpy_helper.to_array(first) + 1.0
    first.CopyFrom(onnx.numpy_helper.from_array(values, first.name))
    assert structure_digest(weights) == digest
    narrower = onnx.load(SAMPLE_MODELS / "plain_cnn.onnx")
    first = narrower.graph.initializer[0]
    values = onnx.numpy_helper.to_array(first)[:-1]
    first.CopyFrom(onnx.numpy_helper.from_array(values, first.name))
    assert structure_digest(narrower) != digest


def test_the_penalty_counts_alive_channels_from_the_agreed_values():
    module = OnnxModule.from_onnx(SAMPLE_MODELS / "resnet_fashion_trained.onnx")
    own = MorphNetPenalty(module)
    seen = []

    def agree(values: np.ndarray) -> np.ndarray:
        seen.append(values.copy())
        return np.zeros_like(values)  # as if the other processes' scales were all zero

    agreed = MorphNetPenalty(module, agree=agree)
    sourced = own.sourced
    assert (own.alive_widths()[sourced] > 0).all()
    assert (agreed.alive_widths()[sourced] == 0).all()
    assert (agreed.alive_widths()[~sourced] == own.alive_widths()[~sourced]).all()
    assert len(seen[0]) == sum(len(s.positions) for sources in own.sources for s in sources)
    assert agreed.cost() < own.cost()
