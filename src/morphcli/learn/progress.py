"""Progress of long training phases: a rich bar on a terminal, one plain line per epoch otherwise.

The bar shows the running loss, the penalty's alive cost and its fraction of the phase's
starting cost, and the training images per second (all processes together); the plain lines
(CI logs) say the same once per epoch. Under ``torchrun`` only rank 0 shows progress.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from morphcli.report.format import human

if TYPE_CHECKING:
    from morphcli.learn.train import EpochStats


class Progress:
    """Reports ``fit``'s steps and epochs on ``console`` (stderr in the CLI).

    Args:
        console: Where to draw.
        unit: The resource's name in messages ("FLOPs" or "params").
        live: A live bar (True) or plain lines (False). Defaults to whether ``console`` is a
            terminal.
    """

    def __init__(self, console: Console, unit: str = "FLOPs", live: bool | None = None) -> None:
        self.console = console
        self.unit = unit
        self.live = console.is_terminal if live is None else live
        self._bar: RichProgress | None = None
        self._task = None
        self._label = ""
        self._reference: float | None = None
        self._loss: float | None = None
        self._alive: float | None = None

    def start(self, label: str, total: int, done: int = 0, reference: float | None = None) -> None:
        """A phase of ``total`` steps begins (``done`` already run when resuming)."""
        self._label, self._reference = label, reference
        self._loss = self._alive = None
        if not self.live:
            return
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(label, total=total, completed=done, info="")

    def _alive_text(self, alive: float | None) -> str:
        if alive is None:
            return ""
        text = f"alive {human(alive)} {self.unit}"
        if self._reference:
            text += f" ({alive / self._reference:.0%})"
        return text

    def advance(self, metrics: dict[str, float | None]) -> None:
        """One step done; ``metrics`` has "loss" and maybe "penalty", "alive" and
        "images_per_s"."""
        if self._bar is None:
            return
        loss = metrics.get("loss")
        self._loss = loss if self._loss is None else 0.9 * self._loss + 0.1 * loss
        if metrics.get("alive") is not None:
            self._alive = metrics["alive"]
        parts = [f"loss {self._loss:.4f}"]
        if metrics.get("penalty") is not None:
            parts.append(f"penalty {metrics['penalty']:.3g}")
        parts.append(self._alive_text(self._alive))
        if metrics.get("images_per_s"):
            parts.append(f"{metrics['images_per_s']:.0f} img/s")
        self._bar.update(self._task, advance=1, info="  ".join(p for p in parts if p))

    def epoch_done(self, stats: EpochStats, epochs: int) -> None:
        parts = [f"{self._label} epoch {stats.epoch + 1}/{epochs}:", f"loss {stats.loss:.4f}"]
        if stats.penalty is not None:
            parts += [f"penalty {stats.penalty:.4g}", f"lambda {stats.strength:.3g}"]
            parts.append(self._alive_text(stats.alive_cost))
        if stats.seconds > 0:
            parts.append(f"{stats.images_per_s:.0f} img/s")
        if self._bar is None:
            self.console.print("  ".join(p for p in parts if p), highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        """A line between phases (what was removed, the multiplier found, a resume); never
        wrapped, so a log keeps one line per note."""
        self.console.print(text, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
