"""Waiting for a running shrink's first epoch checkpoint, to interrupt it there."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def when_rewritten(
    proc: subprocess.Popen, checkpoint: Path, act: Callable[[], object], seconds: float
) -> bool:
    """Call ``act`` as soon as ``checkpoint`` is replaced after its first write (the first
    is written before training, the next after epoch 1; each atomic write is a new file, so
    its inode and mtime change). Returns False if ``proc`` ended first; fails the test if
    neither happens within ``seconds``."""
    deadline = time.monotonic() + seconds
    first = None
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"no epoch checkpoint within {seconds:.0f} s"
        if checkpoint.exists():
            stat = checkpoint.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns)
            first = first or stamp
            if stamp != first:
                act()
                return True
        time.sleep(0.02)
    return False
