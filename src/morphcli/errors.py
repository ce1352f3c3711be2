"""The one exception type users see, and the exit codes the CLI maps errors to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUDGET = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class MorphError(Exception):
    """A problem with the user's input: a file, a flag, a node of their model.

    The CLI prints ``str(error)`` as one line and exits with ``exit_code``.

    Args:
        message: What is wrong, in words a user can act on.
        file: The file involved, if any.
        node: The ONNX node name involved, if any.
        op: The op type of that node, if any.
        exit_code: Defaults to 2 (bad input).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        node: str | None = None,
        op: str | None = None,
        exit_code: int = EXIT_BAD_INPUT,
    ) -> None:
        self.message = message
        self.file = file
        self.node = node
        self.op = op
        self.exit_code = exit_code
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.node is not None:
            where.append(f"node {self.node!r}" + (f" ({self.op})" if self.op else ""))
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message
