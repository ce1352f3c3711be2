"""What learning hands to the expansion: every group keeps an identity the shrunk model's
channel graph still has."""

from __future__ import annotations

import numpy as np
import torch

from morphcli.graph.model import load_model, model_from_proto
from morphcli.shrink.algorithm import LEAST_WIDTH, expansion_copies, keep_strongest
from morphcli.shrink.run import Analysed
from morphcli.surgery.apply import apply_copies
from tests.conftest import REAL_MODELS


def test_keep_strongest_tops_a_group_up_with_its_largest_dead_channels():
    masks = [
        np.array([False, False, False, False]),
        np.array([True, False, True]),
        np.ones(1, bool),
    ]
    vectors = [torch.tensor([0.3, 0.0, 0.9, 0.1]), torch.tensor([1.0, 5.0, 2.0]), None]
    kept = keep_strongest(masks, vectors, least=2)
    assert [m.tolist() for m in kept] == [[True, False, True, False], [True, False, True], [True]]
    assert not masks[0].any()  # the caller's masks are left as they were


def test_a_group_learned_down_to_one_channel_still_expands():
    # PAN/MobileNetV3's decoder group (8 convs joined by Adds) at one channel merges with a
    # one-channel attention branch in the shrunk model's channel graph; at LEAST_WIDTH it
    # keeps its producers, so the expansion finds its width.
    model = load_model(REAL_MODELS / "pan_mobilenetv3_small.onnx")
    start = Analysed.of(model)
    group = next(g for g in start.cg.groups if "Conv_732" in g.producers)
    masks = [np.ones(g.width, dtype=bool) for g in start.cg.groups]
    masks[group.id][:] = False
    masks[group.id][3] = True  # learning left one channel alive
    vectors = [torch.arange(g.width, dtype=torch.float64) for g in start.cg.groups]
    kept = keep_strongest(masks, vectors)
    assert np.flatnonzero(kept[group.id]).tolist() == [3, group.width - 1]
    proto = apply_copies(model, start.cg, [m.astype(np.int64) for m in kept])
    shrunk = Analysed.of(model_from_proto(proto, "shrunk.onnx"))
    copies = expansion_copies(start, start, shrunk, kept, shrunk.cg.widths())
    assert int(copies[group.id].sum()) == LEAST_WIDTH
    assert [int(c.sum()) for c in copies] == [int(m.sum()) for m in kept]
