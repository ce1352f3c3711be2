"""Files a run writes: the one check every output path goes through, and the atomic write.

Every output of a run (``-o``, ``--report``, ``--work-dir``, checkpoints, and any added
later) is registered in one ``OutputPlan`` and checked with the others before any work:

    plan = OutputPlan({model_path: "the input model", data_path: "--data"})
    plan.add("-o", output)                                   # a file
    plan.add("--work-dir", work_dir, FOLDER, temporary=True)  # created by the run
    plan.add("--latency-cache", cache, keep_on_failure=True)
    plan.check()                     # exit 2 with one line, or every output is fine
    with plan:                       # removes temporaries at the end, and on failure all
        ...                          # that the run created
        write_atomic(output, lambda stream: stream.write(data))

To add an output to a command: one ``plan.add`` where the command builds its plan
(``surgery.write.check_output`` for prune and expand, ``shrink.checks.check_outputs``),
before ``check``; then write it with ``write_atomic`` (or ``save_model``).

A path is where it points: symlinks are followed, and a symlinked output is written through
to its target. ``check`` refuses an output that is empty, names an input in any spelling
(symlink, hard link, ``..``) or another output of the run, lies inside a file output, exists
but is not a regular file (a device, a FIFO) or folder as asked, has a name longer than the
file system allows, or whose folder is missing or not writable (tried with a temporary file).

``write_atomic`` fills a short-named temporary file in the target's folder and renames it
over the target, so a reader never sees a half-written file and any legal final name works;
the file gets the mode the umask gives a new file (0666 & ~umask), not the temporary's 0600.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import onnx

from morphcli.errors import MorphError

FILE, FOLDER = "file", "directory"
TEMP_PREFIX, TEMP_SUFFIX = ".morphnet-", ".tmp"
_DEFAULT_NAME_MAX = 255


@dataclass
class Output:
    """One registered output: the flag that named it, the path as given, its kind."""

    flag: str
    path: str
    kind: str = FILE
    keep_on_failure: bool = False
    temporary: bool = False
    real: str = ""
    existed: bool = False


class OutputPlan:
    """The files and folders one run writes, checked together before any work.

    Args:
        inputs: Every file the run reads, mapped to how messages name it ("the input
            model", "--data"); no output may be one of them.
    """

    def __init__(self, inputs: Mapping[str, str]) -> None:
        self.inputs = {path: what for path, what in inputs.items() if path}
        self.outputs: list[Output] = []

    def add(
        self,
        flag: str,
        path: str,
        kind: str = FILE,
        keep_on_failure: bool = False,
        temporary: bool = False,
    ) -> None:
        """Register an output: ``keep_on_failure`` keeps it when the run fails (a cache);
        ``temporary`` removes it when the run ends (checkpoints: a folder only if the run
        created it), except after Ctrl-C."""
        self.outputs.append(Output(flag, os.fspath(path), kind, keep_on_failure, temporary))

    def check(self) -> None:
        """Check every registered output (see the module docstring).

        Raises:
            MorphError: exit code 2, naming the flag and the path.
        """
        inputs = [(_real(path, "input"), what) for path, what in self.inputs.items()]
        for index, out in enumerate(self.outputs):
            if not out.path:
                raise MorphError(f"{out.flag} is empty: give a {out.kind} name")
            if out.kind == FILE and out.path.endswith(os.sep):
                raise MorphError(f"{out.flag} ends with '/': give a file name", file=out.path)
            out.real = _real(out.path, out.flag)
            out.existed = os.path.lexists(out.real)
            for real, what in inputs:
                if _same(out.real, real):
                    raise MorphError(
                        f"{out.flag} is {what}: write the result to another file", file=out.path
                    )
            for other in self.outputs[:index]:
                if _same(out.real, other.real):
                    raise MorphError(f"{out.flag} and {other.flag} are the same path")
                for outer, inner in ((other, out), (out, other)):
                    if outer.kind == FILE and _inside(inner.real, outer.real):
                        raise MorphError(f"{inner.flag} is inside the file {outer.flag}")
                    if outer.temporary and not inner.temporary and _inside(inner.real, outer.real):
                        raise MorphError(
                            f"{inner.flag} is inside {outer.flag}, which the run removes"
                        )
            _check_kind(out)
        planned = {o.real for o in self.outputs if o.kind == FOLDER}
        for out in self.outputs:
            _check_folder(out, planned)

    def __enter__(self) -> OutputPlan:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        """A run that succeeds removes its temporary outputs; one that fails removes what it
        created; an interrupted one (Ctrl-C) keeps all, its checkpoints for ``--resume``."""
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            return
        if kind is None:  # success: temporaries go (a folder only if the run made it)
            doomed = [o for o in self.outputs if o.temporary and (o.kind == FILE or not o.existed)]
        else:  # failure: what the run created goes, what was there before stays
            doomed = [o for o in self.outputs if not o.existed and not o.keep_on_failure]
        doomed = [o for o in doomed if o.real]
        for out in sorted(doomed, key=lambda o: o.kind == FOLDER):
            try:
                if out.kind == FOLDER:
                    os.rmdir(out.real)  # only when empty: never a folder's other files
                else:
                    os.unlink(out.real)
            except OSError:
                pass


def _real(path: str, flag: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError) as error:
        raise MorphError(f"{flag}: not a usable path ({error})", file=path) from None


def _stat(path: str) -> os.stat_result | None:
    """The path's stat, or None where nothing is (or can be, for a name too long)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            return None
        raise MorphError(f"cannot use this path: {_reason(error)}", file=path) from None
    except ValueError as error:
        raise MorphError(f"cannot use this path: {_reason(error)}", file=path) from None


def _same(a: str, b: str) -> bool:
    """The same file: one real path, or one inode (hard links)."""
    if a == b:
        return True
    sa, sb = _stat(a), _stat(b)
    return sa is not None and sb is not None and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_kind(out: Output) -> None:
    st = _stat(out.real)
    if st is None:
        return
    if out.kind == FILE and stat.S_ISDIR(st.st_mode):
        raise MorphError(f"{out.flag} is a directory: give a file name", file=out.path)
    if out.kind == FOLDER and not stat.S_ISDIR(st.st_mode):
        raise MorphError(f"{out.flag} exists and is not a directory", file=out.path)
    if out.kind == FILE and not stat.S_ISREG(st.st_mode):
        raise MorphError(
            f"{out.flag} is a device, pipe or other special file: give a regular file name",
            file=out.path,
        )


def _check_folder(out: Output, planned: set[str]) -> None:
    """The folder the output is written in exists (or is a folder output of the run, which
    creates it), is writable, and allows its name."""
    folder, name = os.path.split(out.real)
    st = _stat(folder)
    if st is None and folder in planned:
        return
    if st is None:
        raise MorphError(f"{out.flag}: the directory {folder} does not exist", file=out.path)
    if not stat.S_ISDIR(st.st_mode):
        raise MorphError(f"{out.flag}: {folder} is not a directory", file=out.path)
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = _DEFAULT_NAME_MAX
    if len(os.fsencode(name)) > name_max:
        raise MorphError(
            f"{out.flag}: the name is {len(os.fsencode(name))} bytes, over the {name_max} "
            "this file system allows",
            file=out.path,
        )
    probe = out.real if out.kind == FOLDER and os.path.isdir(out.real) else folder
    try:
        handle, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=probe)
        os.close(handle)
        os.unlink(tmp)
    except OSError as error:
        raise MorphError(
            f"{out.flag}: cannot write in {probe} ({_reason(error)})", file=out.path
        ) from None


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write a file atomically: ``write(stream)`` fills a temporary file in the target's
    folder (synced to disk), which is then renamed over the target (its symlink followed).

    Raises:
        MorphError: exit code 2 when the file system refuses (full, read-only, gone).
    """
    target = os.path.realpath(path)
    try:
        handle, tmp = tempfile.mkstemp(
            prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=os.path.dirname(target)
        )
    except OSError as error:
        raise MorphError(f"cannot write: {_reason(error)}", file=os.fspath(path)) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise MorphError(f"cannot write: {_reason(error)}", file=os.fspath(path)) from None
        raise


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write a model atomically."""
    write_atomic(path, lambda stream: stream.write(proto.SerializeToString()))
