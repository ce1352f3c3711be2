"""Which saved runs the quality benchmark keeps: a kept run is published as if this
invocation had made it, so a run made under other settings must never be kept, and the
committed results must be what the default invocation reproduces."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_quality  # noqa: E402

RESULTS = BENCH / "results"
# The runs before the 10k default, and the recipe comparisons, used 12k training images.
TRAIN_12K = ("--train-samples", "12000")


def kept(name: str, *flags: str) -> Counter:
    """The runs of each method that ``bench_quality.py FLAGS --out RESULTS/name`` keeps."""
    args = bench_quality.parse_args([*flags, "--out", str(RESULTS / name)])
    return Counter(run["method"] for run in bench_quality._kept_runs(RESULTS / name, args))


def saved(name: str) -> Counter:
    return Counter(run["method"] for run in json.loads((RESULTS / name).read_text())["runs"])


def test_the_default_invocation_keeps_every_committed_run():
    assert kept("quality.json") == saved("quality.json")


def test_another_width_floor_reruns_morphnet_and_its_scratch_test_only():
    runs = kept("quality.json", "--width-floor", "0.8")
    assert runs["morphnet"] == runs["scratch-learned"] == 0
    for method in ("uniform", "torch-pruning", "onnxsim", "scratch-uniform"):
        assert runs[method] == saved("quality.json")[method], method


def test_rerun_makes_the_named_methods_again_and_keeps_the_others():
    runs = kept("quality.json", "--rerun", "morphnet")
    assert runs["morphnet"] == runs["scratch-learned"] == 0  # its scratch test follows it
    for method in ("uniform", "torch-pruning", "onnxsim", "scratch-uniform"):
        assert runs[method] == saved("quality.json")[method], method
    with pytest.raises(SystemExit):
        bench_quality.parse_args(["--rerun", "morphnet,magic"])


def test_another_split_of_the_same_epochs_keeps_the_methods_it_does_not_change():
    # Torch-Pruning's 3 + 1 split: still 4 epochs for uniform and onnxsim, and MorphNet's own
    # split is unchanged; Torch-Pruning's 2 + 2 runs are not this invocation's.
    runs = kept("quality.json", "--learn-epochs", "3", "--finetune-epochs", "1")
    assert runs["torch-pruning"] == 0
    for method in ("uniform", "onnxsim", "morphnet", "scratch-learned", "scratch-uniform"):
        assert runs[method] == saved("quality.json")[method], method
    assert kept("quality_tp_learn3_finetune1.json", *TRAIN_12K)["torch-pruning"] == 0


def test_the_12k_run_is_kept_by_its_own_invocation_only():
    assert kept("quality_train12k.json", *TRAIN_12K) == saved("quality_train12k.json")
    assert not kept("quality_train12k.json")


@pytest.mark.parametrize("flags", [("--train-samples", "6000"), ("--distill-weight", "0")])
def test_other_data_or_loss_keeps_nothing(flags):
    assert not kept("quality.json", *flags)


def test_runs_saved_before_recipes_are_matched_through_the_file_settings():
    # quality_learn2_finetune2.json: no run records a recipe; MorphNet learned 2 of 4 epochs.
    learn2 = ("--morphnet-learn-epochs", "2", *TRAIN_12K)
    assert kept("quality_learn2_finetune2.json", *learn2) == saved("quality_learn2_finetune2.json")
    runs = kept("quality_learn2_finetune2.json", *TRAIN_12K)  # MorphNet's 3 + 1 now
    assert runs["morphnet"] == runs["scratch-learned"] == 0 and runs["uniform"] == 40
