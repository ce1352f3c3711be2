"""Checks that need several processes; ``test_distributed.py`` runs this file under
``torchrun --nproc-per-node 2`` (gloo, one thread each). Every check compares the data-parallel
result with what one process computes on the whole data; a failed assertion ends the run
with its message on stderr and a non-zero exit."""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
import torch.distributed as dist
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from morphcli.errors import EXIT_INTERNAL, MorphError
from morphcli.learn.distributed import World, start_world
from morphcli.learn.execution import Execution
from morphcli.learn.loading import TrainingBatches
from morphcli.learn.npz import ArrayDataset
from morphcli.learn.objective import Objective
from morphcli.learn.penalty import MorphNetPenalty
from morphcli.learn.progress import Progress
from morphcli.learn.strength import Strength
from morphcli.learn.train import Schedule, evaluate, fit
from morphcli.learn.wrapper import OnnxModule

MODEL = "sample_models/resnet_fashion_trained.onnx"
DATA = "sample_models/fashion_mnist_subset.npz"


def check_collectives(world: World) -> None:
    assert world.size == 2 and dist.get_backend() == "gloo", str(world)
    mean = world.mean([float(world.rank), 10.0])
    assert mean.tolist() == [0.5, 10.0], mean
    assert world.from_main(lambda: f"read by rank {world.rank}") == "read by rank 0"

    def fails() -> None:
        raise MorphError("no checkpoint here", exit_code=2)

    try:
        world.from_main(fails)
    except MorphError as error:
        assert error.exit_code == 2 and "no checkpoint here" in str(error), error
    else:
        raise AssertionError("from_main did not pass rank 0's error on")
    world.check_identical("a structure", "same")
    try:
        world.check_identical("the structure after round 1's surgery", f"digest-{world.rank}")
    except MorphError as error:
        assert error.exit_code == EXIT_INTERNAL, error
        assert "2 processes disagree on the structure after round 1's surgery" in str(error)
    else:
        raise AssertionError("different structures on the two ranks went unnoticed")


def _batch_norm_model() -> OnnxModule:
    rng = np.random.default_rng(0)
    values = {
        "scale": rng.uniform(0.5, 1.5, 3), "bias": rng.standard_normal(3),
        "mean": np.zeros(3), "var": np.ones(3),
    }  # fmt: skip
    node = helper.make_node("BatchNormalization", ["x", *values], ["y"], epsilon=1e-5, momentum=0.9)
    graph = helper.make_graph(
        [node], "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()],
    )  # fmt: skip
    return OnnxModule.from_onnx(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def check_synced_batch_norm(world: World) -> None:
    """Each rank normalises its half of a batch with the whole batch's statistics: outputs,
    input and parameter gradients and running statistics equal one process's batch norm."""
    torch.manual_seed(0)
    x, upstream = torch.randn(8, 3, 5, 5) * 3 + 2, torch.randn(8, 3, 5, 5)
    single, synced = _batch_norm_model().train(), _batch_norm_model().train()
    synced.sync_batch_norm(world.sum_over_ranks)
    whole = x.clone().requires_grad_()
    ref = single(whole)
    (ref * upstream).sum().backward()
    half = slice(4 * world.rank, 4 * world.rank + 4)
    part = x[half].clone().requires_grad_()
    out = synced(part)
    (out * upstream[half]).sum().backward()
    torch.testing.assert_close(out, ref[half].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part.grad, whole.grad[half], atol=1e-5, rtol=1e-5)
    for name in ("scale", "bias"):
        grad = synced.tensor(name).grad
        dist.all_reduce(grad)  # each rank holds its half's share of the parameter gradient
        torch.testing.assert_close(grad, single.tensor(name).grad, atol=1e-5, rtol=1e-5)
    for name in ("mean", "var"):
        torch.testing.assert_close(synced.tensor(name), single.tensor(name), atol=1e-6, rtol=1e-6)


def check_batches(world: World, data: ArrayDataset) -> None:
    """The ranks' k-th batches together are one process's k-th batch, epoch after epoch."""
    data = ArrayDataset(data.x, torch.arange(len(data)))  # labels = sample indices
    single = TrainingBatches(data, 32, seed=3, world=World())
    mine = TrainingBatches(data, 32, seed=3, world=world)
    for epoch in (0, 1):
        whole = [sorted(b[1].tolist()) for b in single.epoch(epoch)]
        parts = [b[1].tolist() for b in mine.epoch(epoch)]
        gathered: list = [None] * world.size
        dist.all_gather_object(gathered, parts)
        joined = [sorted(a + b) for a, b in zip(*gathered, strict=True)]
        assert joined == whole, f"epoch {epoch}: the ranks' batches are not the single batches"


def _train(module, data, execution, schedule, fits=1):
    penalty = MorphNetPenalty(
        module, "flops", agree=execution.world.mean if execution.world.distributed else None
    )
    quiet = Progress(Console(quiet=True), live=False)
    for index in range(fits):
        step = schedule if index == 0 else Schedule(epochs=2, batch_size=32, lr=0.01)
        fit(
            module, data, Objective(), step, "cpu", quiet, "t", penalty=penalty,
            strength=Strength(1e-6), start_epoch=index, execution=execution,
        )  # fmt: skip
    return penalty


def check_training(world: World, data: ArrayDataset) -> None:
    """DDP with synchronised BN takes one process's steps (8 steps, twice wrapped)."""
    base = OnnxModule.from_onnx(MODEL)
    schedule = Schedule(epochs=1, batch_size=32, lr=0.01)
    single, ddp = copy.deepcopy(base), copy.deepcopy(base)
    alone = _train(single, data, Execution(), schedule, fits=2)
    shared = _train(ddp, data, Execution(world, sync_bn=True), schedule, fits=2)
    worst = max(
        (float((a - b).abs().max()), name)
        for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values(), strict=True)
        if a.is_floating_point()
    )
    assert worst[0] < 1e-5, f"largest difference from one process: {worst}"
    assert (alone.alive_widths() == shared.alive_widths()).all()
    objective = Objective()
    one = evaluate(single, data, objective, 32, "cpu")
    split = evaluate(single, data, objective, 32, "cpu", execution=Execution(world))
    assert np.allclose(one, split, atol=1e-6), (one, split)


def check_buffers_shared(world: World, data: ArrayDataset) -> None:
    """Without synchronised BN each rank's last update used its own batch; after training
    every rank holds rank 0's running statistics."""
    module = OnnxModule.from_onnx(MODEL)
    _train(module, data, Execution(world), Schedule(epochs=1, batch_size=32, lr=0.01))
    stats = torch.cat([b.flatten().double() for b in module.buffers() if b.is_floating_point()])
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, stats)
    assert torch.equal(gathered[0], gathered[1]), "the ranks' running statistics differ"


def main() -> None:
    torch.set_num_threads(1)
    world = start_world("cpu")
    arrays = np.load(DATA)
    data = ArrayDataset(arrays["x"][:128], torch.from_numpy(arrays["y"][:128]))
    checks = [
        lambda: check_collectives(world),
        lambda: check_synced_batch_norm(world),
        lambda: check_batches(world, data),
        lambda: check_training(world, data),
        lambda: check_buffers_shared(world, data),
    ]
    for check in checks:
        check()
    print(f"rank {world.rank}: {len(checks)} checks passed", file=sys.stderr)
    world.close()


if __name__ == "__main__":
    main()
