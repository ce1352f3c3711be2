"""The one output check and the atomic write: modes from the umask, any legal name, writes
through symlinks, and what a run leaves behind when it succeeds, fails or is interrupted."""

from __future__ import annotations

import os
import stat

import pytest

from morphcli.errors import MorphError
from morphcli.outputs import FOLDER, TEMP_PREFIX, OutputPlan, write_atomic


def _write(path, data=b"new"):
    write_atomic(path, lambda stream: stream.write(data))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        _write(tmp_path / "out.onnx")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.onnx").stat().st_mode) == 0o666 & ~umask


def test_a_255_byte_name_works_and_no_temporary_is_left(tmp_path):
    name = "o" * 250 + ".onnx"
    plan = OutputPlan({})
    plan.add("-o", str(tmp_path / name))
    plan.check()
    _write(tmp_path / name)
    assert os.listdir(tmp_path) == [name]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")

    def fail(stream):
        stream.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert target.read_bytes() == b"old"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)]


def test_a_symlinked_output_is_written_through_to_its_target(tmp_path):
    (tmp_path / "target.onnx").write_bytes(b"old")
    (tmp_path / "link.onnx").symlink_to("target.onnx")
    _write(tmp_path / "link.onnx")
    assert (tmp_path / "link.onnx").is_symlink()
    assert (tmp_path / "target.onnx").read_bytes() == b"new"


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_no_spelling_of_an_input_is_an_output(tmp_path, spelling):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")
    (tmp_path / "sub").mkdir()
    output = {
        "same": model,
        "dotdot": tmp_path / "sub" / ".." / "model.onnx",
        "symlink": tmp_path / "link.onnx",
        "hardlink": tmp_path / "hard.onnx",
    }[spelling]
    if spelling == "symlink":
        output.symlink_to(model)
    if spelling == "hardlink":
        os.link(model, output)
    plan = OutputPlan({str(model): "the input model"})
    plan.add("-o", str(output))
    with pytest.raises(MorphError, match="-o is the input model"):
        plan.check()


def _plan(tmp_path) -> OutputPlan:
    plan = OutputPlan({})
    plan.add("-o", str(tmp_path / "out.onnx"))
    plan.add("--work-dir", str(tmp_path / "work"), FOLDER, temporary=True)
    plan.add("checkpoint", str(tmp_path / "work" / "checkpoint.pt"), temporary=True)
    plan.add("--cache", str(tmp_path / "cache.json"), keep_on_failure=True)
    plan.check()
    return plan


def _run(plan, tmp_path, error: type[BaseException] | None) -> None:
    with plan:
        (tmp_path / "work").mkdir()
        for name in ("out.onnx", "work/checkpoint.pt", "cache.json"):
            _write(tmp_path / name)
        if error is not None:
            raise error()


def test_a_failed_run_removes_what_it_created_but_keeps_a_cache(tmp_path):
    old = tmp_path / "old.txt"
    old.write_bytes(b"user's")
    with pytest.raises(RuntimeError):
        _run(_plan(tmp_path), tmp_path, RuntimeError)
    assert sorted(os.listdir(tmp_path)) == ["cache.json", "old.txt"]


def test_a_successful_run_removes_its_temporaries(tmp_path):
    _run(_plan(tmp_path), tmp_path, None)
    assert sorted(os.listdir(tmp_path)) == ["cache.json", "out.onnx"]


def test_an_interrupted_run_keeps_everything_for_resume(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(_plan(tmp_path), tmp_path, KeyboardInterrupt)
    assert (tmp_path / "work" / "checkpoint.pt").exists()


def test_a_failed_run_never_removes_what_existed_before(tmp_path):
    (tmp_path / "out.onnx").write_bytes(b"previous result")
    plan = OutputPlan({})
    plan.add("-o", str(tmp_path / "out.onnx"))
    plan.check()
    with pytest.raises(RuntimeError), plan:
        raise RuntimeError("training diverged")
    assert (tmp_path / "out.onnx").read_bytes() == b"previous result"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_up_front(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    plan = OutputPlan({})
    plan.add("-o", str(folder / "out.onnx"))
    with pytest.raises(MorphError, match="cannot write in"):
        plan.check()
