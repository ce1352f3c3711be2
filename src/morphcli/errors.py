"""The one exception type users see, the exit codes the CLI maps errors to, and the one place
that makes any text safe to print as a single line."""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_BUDGET = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3

# C0 and C1 control characters (newlines, terminal escape sequences), DEL, the Unicode line
# and paragraph separators, and lone surrogates (undecodable bytes of a file name).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def one_line(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``), so a
    hostile file or node name can neither break the line nor drive the terminal."""
    return _UNPRINTABLE.sub(
        lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text
    )


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
            where.append(str(self.file))
        if self.node is not None:
            where.append(f"node {self.node!r}" + (f" ({self.op})" if self.op else ""))
        prefix = ": ".join(where)
        return one_line(f"{prefix}: {self.message}" if prefix else self.message)
