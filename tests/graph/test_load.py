"""Reading a model trusts nothing: external data is confined to the model's folder by our own
check, before any file outside it is opened (proved with inotify on a sentinel file), and
valid external data loads exactly."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from morphcli.cli import main
from morphcli.graph.model import load_model
from tests.hostile.models import initializer, set_external, tiny_model, with_external_data

IN_ACCESS, IN_OPEN = 0x1, 0x20

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")


class OpenWatch:
    """Counts every open or read of one file, by any code in the process (C++ too)."""

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0
        assert self.libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN | IN_ACCESS) >= 0

    def events(self) -> int:
        try:
            return len(os.read(self.fd, 65536))
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def sentinel(tmp_path):
    """A file outside the model's folder holding exactly the bytes conv2.weight needs."""
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "sentinel.bin"
    path.write_bytes(np.ones(16 * 16 * 9, np.float32).tobytes())
    watch = OpenWatch(path)
    yield path, watch
    watch.close()


def _escape(folder: Path, sentinel: Path, spelling: str) -> str:
    if spelling == "parent":
        return "../outside/sentinel.bin"
    if spelling == "absolute":
        return str(sentinel)
    if spelling == "climbs_back":
        return "sub/../../outside/sentinel.bin"
    if spelling == "symlink":
        (folder / "weights_link.bin").symlink_to(sentinel)
        return "weights_link.bin"
    (folder / "outside_dir").symlink_to(sentinel.parent)
    return "outside_dir/sentinel.bin"


@pytest.mark.parametrize("spelling", ["parent", "absolute", "climbs_back", "symlink", "dirlink"])
def test_external_data_outside_the_folder_is_refused_before_it_is_opened(
    cli, tmp_path, sentinel, spelling
):
    path, watch = sentinel
    folder = tmp_path / "model"
    folder.mkdir()
    model = with_external_data(tiny_model(), folder)
    set_external(model, location=_escape(folder, path, spelling))
    assert watch.events() == 0
    for argv in (["analyze", str(model)], ["prune", str(model), "-o", str(tmp_path / "o.onnx")]):
        result = cli.invoke(main, argv)
        assert result.exit_code == 2, result.output
        assert "must be a file in the model's folder" in result.stderr or (
            "resolves outside the model's folder" in result.stderr
        )
    assert watch.events() == 0, "a file outside the model's folder was opened"
    assert not (tmp_path / "o.onnx").exists()
    # The watch sees opens, and onnx's own loader would have read the sentinel (the symlink
    # spellings pass its checks), so this test fails if our check goes.
    proto = onnx.load(str(model), load_external_data=False)
    try:
        onnx.load_external_data_for_model(proto, str(folder))
    except Exception:
        path.read_bytes()
    assert watch.events() > 0


def test_valid_external_data_loads_exactly(tmp_path):
    proto = tiny_model()
    model = load_model(with_external_data(proto, tmp_path))
    want = onnx.numpy_helper.to_array(initializer(proto, "conv2.weight"))
    got = np.asarray(model.graph.tensors()["conv2.weight"].values)
    assert np.array_equal(got, want)
    assert [Path(f).name for f in model.files] == ["model.onnx", "weights.bin"]
