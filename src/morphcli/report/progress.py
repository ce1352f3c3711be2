"""Progress of a counted job that is not training (measuring a latency model): a rich bar on
a terminal, a plain line every few steps otherwise (CI logs)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

PLAIN_EVERY = 5


class StepBar:
    """``bar(done, total)`` after each step; the bar closes itself when done reaches total.

    Args:
        console: Where to draw (stderr in the CLI).
        label: What is counted, e.g. "latency: width configurations".
        live: A live bar (True) or plain lines (False). Defaults to whether ``console`` is a
            terminal.
    """

    def __init__(self, console: Console, label: str, live: bool | None = None) -> None:
        self.console = console
        self.label = label
        self.live = console.is_terminal if live is None else live
        self._bar: RichProgress | None = None
        self._task = None

    def __call__(self, done: int, total: int) -> None:
        if not self.live:
            if done % PLAIN_EVERY == 0 or done == total:
                self.console.print(f"{self.label} {done}/{total}", highlight=False)
            return
        if self._bar is None:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        self._bar.update(self._task, completed=done)
        if done >= total:
            self._bar.stop()
            self._bar = None
