"""How much memory one run may ask for: the one bound that model files, data files, input
shapes and width changes are checked against before anything is allocated.

The bound is ``DEFAULT_MAX_MEMORY`` unless a run sets another with ``memory_limit`` (the
CLI's ``--max-memory``). Estimates are checked, not measurements: a check refuses work whose
size is known up front (a file's size, a header's declared shape, a model's weights and
batch-1 activations at new widths) to be over the bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from morphcli.errors import MorphError

DEFAULT_MAX_MEMORY = 8 * 2**30
MAX_MEMORY_FLAG = "--max-memory"
# A protobuf message, hence one ONNX file without external data, holds less than 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1

_limit = [DEFAULT_MAX_MEMORY]


def max_memory() -> int:
    """The bound in bytes in effect now."""
    return _limit[-1]


@contextmanager
def memory_limit(nbytes: int | None) -> Iterator[None]:
    """Within the block the bound is ``nbytes`` (the default when None)."""
    _limit.append(DEFAULT_MAX_MEMORY if nbytes is None else int(nbytes))
    try:
        yield
    finally:
        _limit.pop()


def format_bytes(nbytes: float) -> str:
    """1610612736 -> '1.5 GiB'."""
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if nbytes >= 1024**power:
            return f"{nbytes / 1024**power:.3g} {unit}"
    return f"{nbytes:.0f} bytes"


def check_model_size(nbytes: float, what: str, file: str | None = None) -> None:
    """Refuse (exit 2) a model of ``nbytes`` (its file, or with its external data) over the
    memory bound or the 2 GiB that one protobuf, and so one model in memory, holds."""
    check_memory(nbytes, what, file)
    if nbytes > PROTOBUF_LIMIT:
        raise MorphError(
            f"{what} is {format_bytes(nbytes)}: morphnet handles models of up to 2 GiB "
            "(one protobuf), external data included",
            file=file,
        )


def check_memory(nbytes: float, what: str, file: str | None = None) -> None:
    """Refuse (exit 2) when ``what`` would take more than the bound.

    Args:
        nbytes: The size it would take.
        what: What would take it, as the start of a sentence ("the input x of 1x3x9e9x9").
        file: The file involved, if any.
    """
    limit = max_memory()
    if nbytes > limit:
        raise MorphError(
            f"{what} would take {format_bytes(nbytes)}, over the memory limit of "
            f"{format_bytes(limit)} (raise it with {MAX_MEMORY_FLAG})",
            file=file,
        )
