"""The latency-model cache: keyed by everything a measurement depends on, invalidated when
any of it changes, written atomically, and never trusted blindly."""

from __future__ import annotations

import json
import os

import pytest

from morphcli.graph.builder import build_channel_graph
from morphcli.graph.model import load_model
from morphcli.graph.runtime import Runtime
from morphcli.resources import latency_cache
from morphcli.resources.cost import build_cost_model
from morphcli.resources.latency import FORMAT
from morphcli.resources.latency_cache import cache_key, entry_path, load_cached, store
from morphcli.surgery.latency import LatencySetup, latency_model
from tests.conftest import SAMPLE_MODELS

SHAPES = {"input": (1, 1, 28, 28)}


def _key(**changes):
    runtime = Runtime(
        changes.pop("provider", "CPUExecutionProvider"),
        changes.pop("threads", 1),
        changes.pop("batch", 1),
    )
    key = cache_key(changes.pop("digest", "ab" * 32), changes.pop("shapes", SHAPES), runtime)
    key.update(changes)
    return key


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The plain CNN's latency model, measured once (1 thread) into a cache of its own."""
    latency_cache = str(tmp_path_factory.mktemp("cache"))
    model = load_model(SAMPLE_MODELS / "plain_cnn.onnx")
    cg = build_channel_graph(model)
    cm = build_cost_model(model, cg)
    notes: list[str] = []
    setup = LatencySetup(Runtime(threads=1), latency_cache, note=notes.append)
    return model, cg, cm, setup, latency_model(model, cg, cm, setup), notes


def test_every_key_field_changes_the_entry(tmp_path):
    base = entry_path(tmp_path, _key())
    variants = {
        "model": _key(digest="cd" * 32),
        "input shapes": _key(shapes={"input": (1, 1, 32, 32)}),
        "provider": _key(provider="CUDAExecutionProvider"),
        "threads": _key(threads=2),
        "batch": _key(batch=8),
        "machine": _key(machine={"host": "elsewhere"}),
        "morphcli version": _key(morphcli="99.0"),
        "onnxruntime version": _key(onnxruntime="0.1"),
        "format": _key(format=FORMAT + 1),
    }
    paths = {name: entry_path(tmp_path, key) for name, key in variants.items()}
    assert all(path != base for path in paths.values()), paths
    assert len(set(paths.values())) == len(paths)
    assert entry_path(tmp_path, _key()) == base  # and the same key finds the same entry


def test_a_model_is_measured_once_and_read_back(measured):
    model, cg, cm, setup, first, notes = measured
    latency_cache = setup.cache_dir
    assert any("measuring" in n for n in notes) and any("cached" in n for n in notes)
    notes.clear()
    again = latency_model(model, cg, cm, setup)
    assert any("from the cache" in n for n in notes), notes
    assert again.to_dict() == first.to_dict()
    assert [f for f in os.listdir(latency_cache) if f.endswith(".tmp")] == []


def test_a_changed_runtime_or_model_misses_the_cache(measured):
    model, _, _, setup, latency, _ = measured
    digest = latency_cache.model_digest(model.to_proto().SerializeToString())
    key = cache_key(digest, model.input_shapes, setup.runtime)
    assert load_cached(setup.cache_dir, key).to_dict() == latency.to_dict()
    for other in (Runtime(threads=2), Runtime(threads=1, batch=4)):
        assert load_cached(setup.cache_dir, cache_key(digest, model.input_shapes, other)) is None
    changed = cache_key("0" * 64, model.input_shapes, setup.runtime)
    assert load_cached(setup.cache_dir, changed) is None


def test_broken_or_foreign_entries_are_misses(measured, tmp_path):
    latency = measured[4]
    key = _key()
    path = store(tmp_path, key, latency)
    assert load_cached(tmp_path, key) is not None
    doc = json.loads(path.read_text())
    doc["key"]["threads"] = 7  # an entry that claims another key at this path
    path.write_text(json.dumps(doc))
    assert load_cached(tmp_path, key) is None
    for broken in ("", "{", "[]", json.dumps({"key": key, "model": {"format": FORMAT}})):
        path.write_text(broken)
        assert load_cached(tmp_path, key) is None, broken
    doc = {"key": key, "model": {**latency.to_dict(), "format": FORMAT - 1}}
    path.write_text(json.dumps(doc))
    assert load_cached(tmp_path, key) is None


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(latency_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert latency_cache.default_cache_dir() == tmp_path / "xdg" / "morphcli" / "latency"
    monkeypatch.setenv(latency_cache.ENV, str(tmp_path / "mine"))
    assert latency_cache.default_cache_dir() == tmp_path / "mine"
    assert LatencySetup().folder() == str(tmp_path / "mine")
    assert LatencySetup(cache_dir="").folder() is None


def test_an_unwritable_cache_is_reported_not_fatal(measured, tmp_path):
    model, cg, cm, _, _, _ = measured
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    notes: list[str] = []
    setup = LatencySetup(Runtime(threads=1), str(blocker / "cache"), note=notes.append)
    latency = latency_model(model, cg, cm, setup)
    assert latency.units and any("not written" in n for n in notes), notes
