"""Runs every hostile case and records what each command run did, as JSON.

``python -m tests.hostile.runner ROOT RESULTS`` builds the cases under ROOT and runs each
command line in a child forked from this process, which has imported morphcli, torch and
onnxruntime but run nothing (no thread pools yet, so forking is safe and every run starts
in milliseconds). The child calls the real entry point (``main.main``) with the case folder
as working directory and its file descriptors 1 and 2 on files, so everything reaches them
(onnxruntime's C++ log too) as in a real process. The parent reads the child's resource
usage (``os.wait4``: peak resident memory) and kills it past ``TIME_LIMIT_S``. Around each
run it compares the case folder before and after (names, kinds, bytes, mtimes), checks the
models written, then removes what the run wrote so the next run starts from the same state.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx

TIME_LIMIT_S = 60
CRASHED = 98


def snapshot(folder: Path) -> dict[str, list]:
    """Every entry under ``folder`` (symlinks not followed): its kind and fingerprint."""
    entries: dict[str, list] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            key = os.path.relpath(path, folder)
            if stat.S_ISLNK(st.st_mode):
                entries[key] = ["link", os.readlink(path)]
            elif stat.S_ISDIR(st.st_mode):
                entries[key] = ["dir"]
            elif stat.S_ISREG(st.st_mode):
                entries[key] = ["file", _digest(path, st), st.st_mtime_ns, stat.S_IMODE(st.st_mode)]
            else:
                entries[key] = ["special", st.st_mode, st.st_mtime_ns]
    return entries


def _digest(path: str, st: os.stat_result) -> str:
    """sha256 of the bytes; of the size and the first and last MiB for big (sparse) files."""
    with open(path, "rb") as stream:
        if st.st_size <= 16 * 2**20:
            return hashlib.sha256(stream.read()).hexdigest()
        head = stream.read(2**20)
        stream.seek(-(2**20), os.SEEK_END)
        return hashlib.sha256(head + stream.read() + str(st.st_size).encode()).hexdigest()


def _child(argv: list[str], cwd: Path, out: int, err: int) -> None:
    code = CRASHED
    try:
        os.chdir(cwd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True
        )
        from morphcli.cli import main

        try:
            main.main(args=argv, prog_name="morphnet")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = CRASHED
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code & 0xFF)


def run_command(argv: list[str], cwd: Path) -> dict:
    """Run one command line in a forked child; its exit code, output, time and peak memory."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(argv, cwd, out.fileno(), err.fileno())
        timed_out = False
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - started > TIME_LIMIT_S:
                os.kill(pid, signal.SIGKILL)
                _, status, usage = os.wait4(pid, 0)
                timed_out = True
                break
            time.sleep(0.002)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return {
            "code": os.waitstatus_to_exitcode(status),
            "stdout": out.read().decode("utf-8", "backslashreplace"),
            "stderr": err.read().decode("utf-8", "backslashreplace"),
            "seconds": seconds,
            "peak_rss": usage.ru_maxrss * 1024,  # kilobytes on Linux
            "timed_out": timed_out,
        }


def _non_finite_weights(path: Path) -> list[str]:
    """The float initializers of a model holding NaN or Inf."""
    proto = onnx.load(str(path))
    return [
        t.name
        for t in proto.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        and not np.isfinite(onnx.numpy_helper.to_array(t)).all()
    ]


def _written_non_finite(folder: Path, written: list[str]) -> dict[str, list[str]]:
    """Non-finite weights of each model written that the input model (``model.onnx``) did
    not hold already (an ``inf`` Clip bound stays an ``inf`` Clip bound)."""
    models = [k for k in written if k.endswith(".onnx")]
    source = folder / "model.onnx"
    allowed = set(_non_finite_weights(source)) if models and source.is_file() else set()
    found = {}
    for key in models:
        try:
            bad = [n for n in _non_finite_weights(folder / key) if n not in allowed]
        except Exception as error:
            bad = [f"unreadable: {error}"]
        if bad:
            found[key] = bad
    return found


def check_folder(before: dict, after: dict, folder: Path, writes: tuple[str, ...]) -> dict:
    """What changed in the case folder: inputs altered, files left, models written."""
    changed = [k for k, v in before.items() if k not in writes and after.get(k) != v]
    created = sorted(k for k in after if k not in before)
    written = [k for k in writes if k in after and after.get(k) != before.get(k)]
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {
        k: oct(after[k][3])
        for k in written
        if after[k][0] == "file" and after[k][3] != 0o666 & ~umask
    }
    non_finite = _written_non_finite(folder, written)
    return {
        "changed": changed,
        "created": created,
        "written": written,
        "modes": modes,
        "non_finite": non_finite,
    }


def _remove_created(folder: Path, before: dict, after: dict) -> None:
    """Remove what a run created, deepest first."""
    for key in sorted((k for k in after if k not in before), key=len, reverse=True):
        path = folder / key
        if after[key][0] == "dir":
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)


def main(root: Path, results: Path) -> None:
    from tests.hostile.cases import generate

    cases = generate(root)
    records = []
    for case in cases:
        originals = {
            k: (case.folder / k).read_bytes()
            for run in case.runs
            for k in run.writes
            if (case.folder / k).is_file() and not (case.folder / k).is_symlink()
        }
        for run in case.runs:
            before = snapshot(case.folder)
            result = run_command(run.argv, case.folder)
            after = snapshot(case.folder)
            result.update(check_folder(before, after, case.folder, run.writes))
            _remove_created(case.folder, before, after)
            for key, content in originals.items():
                (case.folder / key).write_bytes(content)
            result.update(
                {
                    "case": case.id,
                    "class": case.klass,
                    "argv": run.argv,
                    "expect": list(run.expect),
                    "early": run.early,
                    "writes": list(run.writes),
                }
            )
            records.append(result)
    results.write_text(json.dumps(records))


if __name__ == "__main__":
    import onnxruntime  # noqa: F401
    import PIL.Image  # noqa: F401
    import torch  # noqa: F401

    import morphcli.cli
    import morphcli.learn.wrapper
    import morphcli.shrink.algorithm  # noqa: F401

    main(Path(sys.argv[1]), Path(sys.argv[2]))
