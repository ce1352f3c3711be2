"""Imported by Python at start-up when this folder is on PYTHONPATH (``site``): every file a
process opens for writing or renames into ``$MORPHCLI_AUDIT_DIR`` is logged to
``$MORPHCLI_AUDIT_LOG`` as "RANK EVENT PATH", so a test sees which process wrote what."""

import os
import sys

_WATCHED = os.environ.get("MORPHCLI_AUDIT_DIR")
_LOG = os.environ.get("MORPHCLI_AUDIT_LOG")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _watched(path) -> bool:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        return False  # a file descriptor
    return os.path.abspath(path).startswith(_WATCHED)


def _install() -> None:
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rank = os.environ.get("RANK", "-")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if mode else bool(flags & _WRITE_FLAGS)
            if writes and _watched(path):
                os.write(fd, f"{rank} open {os.fspath(path)}\n".encode())
        elif event == "os.rename" and _watched(args[1]):
            os.write(fd, f"{rank} rename {os.fspath(args[1])}\n".encode())

    sys.addaudithook(hook)


if _WATCHED and _LOG:
    _install()
