"""Measuring a model's latency model: width variants made by surgery, timed with onnxruntime.

The model is timed at full width and at FIT_CONFIGS random width configurations (half of
them every removable group scaled by a common factor, half each group by its own, as a
pruned structure is; each configuration's widths rounded to a multiple of one of ROUNDINGS,
so aligned and unaligned widths are both seen), each variant made by ``apply_copies``
(random channels kept or replicated). All variants are timed round-robin in one process (in
chunks whose sessions hold at most CHUNK_BYTES), so a change in machine load hits them alike.
Every kernel's time goes to the unit of nodes it runs (``resources.kernels``); the fit is
``resources.latency``. CHECK_CONFIGS further configurations, not used in the fit, check it:
the predicted whole-model latency against the measured one. The result is cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from morphcli.errors import MorphError
from morphcli.graph.channels import ChannelGraph
from morphcli.graph.model import Model
from morphcli.graph.runtime import Runtime
from morphcli.resources.cost import CostModel
from morphcli.resources.kernels import OriginalGraph, Units, anchors, coverage
from morphcli.resources.latency import LatencyModel, Unit, UnitFeatures, fit_latency
from morphcli.resources.latency_cache import (
    cache_key,
    default_cache_dir,
    entry_path,
    load_cached,
    model_digest,
    store,
)
from morphcli.resources.measure import BIG_BYTES, SESSIONS, Timing, time_models
from morphcli.surgery.apply import apply_copies
from morphcli.surgery.widths import copies_for_width

FIT_CONFIGS = 24
CHECK_CONFIGS = 8
SCALES = (0.05, 1.25)
JITTER = 0.25
ROUNDINGS = (1, 4, 8, 16, 2)
# What the sessions of variants timed together may hold at most (they are alive at once).
CHUNK_BYTES = 2e9

# (configurations done, configurations in all)
OnStep = Callable[[int, int], None]


@dataclass(frozen=True)
class LatencySetup:
    """How latency is measured: where the model runs, where measurements are cached (None:
    the default folder; ``""``: no cache), and where progress goes: ``on_step(done, total)``
    while measuring, ``note(text)`` for what happened."""

    runtime: Runtime = field(default_factory=Runtime)
    cache_dir: str | None = None
    on_step: OnStep | None = field(default=None, compare=False)
    note: Callable[[str], None] | None = field(default=None, compare=False)

    def say(self, text: str) -> None:
        if self.note is not None:
            self.note(text)

    def folder(self) -> str | None:
        if self.cache_dir == "":
            return None
        return str(default_cache_dir()) if self.cache_dir is None else self.cache_dir


def width_configs(cg: ChannelGraph, count: int, seed: int) -> list[np.ndarray]:
    """``count`` width configurations. Even ones scale every removable group by one factor
    (stratified over SCALES) jittered by +-JITTER, like a uniform multiplier; odd ones scale
    each group by its own factor drawn from SCALES, like a pruned or learned structure. Each
    is rounded to a multiple of ROUNDINGS[k % len] where that leaves a channel; pinned
    groups keep their widths."""
    rng = np.random.default_rng(seed)
    widths = cg.widths().astype(np.float64)
    prunable = cg.prunable_mask()
    low, high = SCALES
    configs = []
    for k in range(count):
        if k % 2 == 0:
            scale = low + (high - low) * (k + rng.random()) / count
            factors = scale * rng.uniform(1 - JITTER, 1 + JITTER, len(widths))
        else:
            factors = rng.uniform(low, high, len(widths))
        scaled = widths * factors
        rounding = ROUNDINGS[k % len(ROUNDINGS)]
        rounded = np.where(scaled >= rounding, np.rint(scaled / rounding) * rounding, scaled)
        chosen = np.maximum(1, np.rint(rounded))
        configs.append(np.where(prunable, chosen, widths).astype(np.int64))
    return configs


def variant(model: Model, cg: ChannelGraph, widths: np.ndarray, seed: int) -> onnx.ModelProto:
    """The model at ``widths``: random channels kept, or replicated to widen."""
    rng = np.random.default_rng(seed)
    copies = [
        copies_for_width(rng.random(g.width), int(w)) if g.prunable else np.ones(g.width, int)
        for g, w in zip(cg.groups, widths, strict=True)
    ]
    return apply_copies(model, cg, copies)


def _unit_ms(timing: Timing, proto: onnx.ModelProto, units: Units) -> dict[str, float]:
    """Kernel time per unit root (kernels without an anchor are left out)."""
    graph = OriginalGraph.of(proto)
    anchor_of = anchors(graph, timing.optimized)
    units.add(coverage(graph, set(anchor_of.values())))
    out: dict[str, float] = {}
    for kernel, ms in timing.kernels.items():
        if kernel in anchor_of:
            root = units.find(anchor_of[kernel])
            out[root] = out.get(root, 0.0) + ms
    return out


def _chunks(configs: list[np.ndarray], cm: CostModel) -> list[list[int]]:
    """Configurations in runs whose sessions (alive at once: one profiled and SESSIONS plain
    ones each, every one holding about twice the weights) hold at most CHUNK_BYTES; a
    configuration with over BIG_BYTES of weights runs alone (with one plain session)."""
    chunks: list[list[int]] = []
    held, big = 0.0, False
    for k, widths in enumerate(configs):
        weights = 4.0 * cm.params(widths.astype(np.float64))
        size = 2 * weights * (1 + SESSIONS)
        if not chunks or big or weights > BIG_BYTES or held + size > CHUNK_BYTES:
            chunks.append([])
            held = 0.0
        chunks[-1].append(k)
        held, big = held + size, weights > BIG_BYTES
    return chunks


def measure_latency_model(
    model: Model,
    cg: ChannelGraph,
    cm: CostModel,
    runtime: Runtime,
    seed: int = 0,
    on_step: OnStep | None = None,
) -> LatencyModel:
    """Measure, fit and check the latency model (see the module docstring).

    Raises:
        MorphError: onnxruntime cannot run the model on ``runtime`` (exit code 2).
    """
    fit_configs = [cg.widths(), *width_configs(cg, FIT_CONFIGS, seed)]
    configs = fit_configs + width_configs(cg, CHECK_CONFIGS, seed + 1)
    original = model.to_proto()
    order = [n.name for n in model.graph.nodes]
    units = Units(order)
    whole: list[float] = []
    per_config: list[dict[str, float]] = []
    full_width: list = []
    for chunk in _chunks(configs, cm):
        made = [original if k == 0 else variant(model, cg, configs[k], seed + k) for k in chunk]
        timed = time_models(made, runtime, model.input_shapes, model.path)
        for proto, timing in zip(made, timed, strict=True):
            whole.append(timing.whole_ms)
            per_config.append(_unit_ms(timing, proto, units))
            if not full_width:
                full_width = [timing, proto]
        if on_step:
            on_step(len(whole), len(configs))
    members = [tuple(m) for m in units.members(order + _extra_nodes(units, order))]
    roots = {units.find(m[0]): u for u, m in enumerate(members)}
    n_fit = len(fit_configs)
    unit_ms = np.zeros((n_fit, len(members)))
    for k, times in enumerate(per_config[:n_fit]):
        for root, ms in times.items():
            unit_ms[k, roots[units.find(root)]] += ms
    features = UnitFeatures(model, cg, cm.flop_table, members)
    floats = [c.astype(np.float64) for c in configs]
    fits, scale = fit_latency(features, floats[:n_fit], unit_ms, np.array(whole[:n_fit]))
    latency = LatencyModel(
        runtime={"provider": runtime.provider, "threads": runtime.threads, "batch": runtime.batch},
        units=[
            Unit(nodes, fit, float(unit_ms[0, u]))
            for u, (nodes, fit) in enumerate(zip(members, fits, strict=True))
        ],
        scale=scale,
        measured_ms=whole[0],
        kernels=_kernels(*full_width, units, roots),
    )
    resource = latency.bind(model, cg, cm)
    errors = [resource.value(floats[k]) / whole[k] - 1.0 for k in range(n_fit, len(configs))]
    fitted = [resource.value(floats[k]) / whole[k] - 1.0 for k in range(n_fit)]
    latency.check = {
        "fit_errors": [round(e, 4) for e in fitted],
        "configs": len(errors),
        "errors": [round(e, 4) for e in errors],
        "median_abs_error": float(np.median(np.abs(errors))),
        "max_abs_error": float(np.max(np.abs(errors))),
    }
    return latency


def _extra_nodes(units: Units, order: list[str]) -> list[str]:
    """Nodes surgery added in some variant (not in the model itself)."""
    known = set(order)
    return [n for n in units.nodes() if n not in known]


def _kernels(timing: Timing, proto: onnx.ModelProto, units: Units, roots: dict) -> list[dict]:
    """What onnxruntime ran at full width: kernel, op type, unit and time."""
    anchor_of = anchors(OriginalGraph.of(proto), timing.optimized)
    op_types = {n.name: n.op_type for n in timing.optimized.graph.node}
    return [
        {
            "name": kernel,
            "op_type": op_types.get(kernel, "?"),
            "unit": roots[units.find(anchor_of[kernel])] if kernel in anchor_of else None,
            "ms": round(ms, 5),
        }
        for kernel, ms in timing.kernels.items()
    ]


def latency_model(
    model: Model, cg: ChannelGraph, cm: CostModel, setup: LatencySetup
) -> LatencyModel:
    """The model's latency model on ``setup.runtime``: from the cache, else measured (and
    cached; a cache that cannot be written is reported and skipped)."""
    proto = model.to_proto().SerializeToString()
    key = cache_key(model_digest(proto), model.input_shapes, setup.runtime)
    folder = setup.folder()
    if folder is not None:
        cached = load_cached(folder, key)
        if cached is not None:
            setup.say(f"latency model from the cache: {entry_path(folder, key)}")
            return cached
    setup.say(
        f"measuring the latency model on {setup.runtime} ({1 + FIT_CONFIGS + CHECK_CONFIGS} "
        "width configurations; cached for next time)"
    )
    seed = int(key["model"][:8], 16)
    latency = measure_latency_model(model, cg, cm, setup.runtime, seed, setup.on_step)
    if folder is not None:
        try:
            path = store(folder, key, latency)
        except (OSError, MorphError) as error:
            setup.say(f"latency cache not written ({folder}): {error}")
        else:
            setup.say(f"latency model cached: {path}")
    return latency
